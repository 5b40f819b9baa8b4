"""The bench result file every bench writes: command, date, wall time, metrics."""

from __future__ import annotations

import datetime
import json
import sys

from rlpost.metrics import BENCH_RESULTS, write_bench_result


def test_bench_result_has_the_command_date_wall_time_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench/demo.py", "--threads", "2"])
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    path = write_bench_result("demo", {"accuracy": 0.5, "by_phase": {"train": 1.25}}, 12.345, results_dir=tmp_path)
    after = datetime.datetime.now(datetime.timezone.utc)

    assert path == tmp_path / "demo.json"
    result = json.loads(path.read_text())
    assert list(result) == ["command", "date", "wall_s", "metrics"]
    assert result["command"] == ".venv/bin/python bench/demo.py --threads 2"
    date = datetime.datetime.fromisoformat(result["date"])
    assert date.tzinfo is not None and before <= date <= after
    assert result["wall_s"] == 12.3
    assert result["metrics"] == {"accuracy": 0.5, "by_phase": {"train": 1.25}}


def test_bench_result_keeps_a_given_command_and_defaults_to_the_repos_results(tmp_path):
    path = write_bench_result("sandbox", {}, 1.0, command="make sandbox", results_dir=tmp_path / "new")
    assert json.loads(path.read_text())["command"] == "make sandbox"
    assert BENCH_RESULTS.parent.name == "bench" and (BENCH_RESULTS.parent / "grpo_tiny.py").exists()
