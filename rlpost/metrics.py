"""Run metrics: one JSONL line per step (always), wandb (offline unless configured), JSON results."""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlpost.config import ConfigError, doc

BENCH_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


@dataclass
class LoggingConfig:
    wandb_mode: str = doc(
        "wandb mode: 'offline' (files under the run folder, no network), 'online' or 'disabled'.", "offline"
    )
    wandb_project: str = doc("wandb project name.", "rlpost")

    def validate(self):
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ConfigError(
                f"logging.wandb_mode: {self.wandb_mode!r} is not one of ['offline', 'online', 'disabled']"
            )


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsLogger:
    """Appends `{"step", "time", **metrics}` to run_dir/metrics.jsonl and mirrors it to wandb."""

    def __init__(self, run_dir: str | Path, cfg: LoggingConfig, run_name: str, config: dict | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb = None
        if cfg.wandb_mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self.wandb = wandb.init(
                    project=cfg.wandb_project,
                    name=run_name,
                    dir=str(run_dir),
                    mode=cfg.wandb_mode,
                    config=config,
                    reinit="finish_previous",
                )
            except Exception as e:  # logging must never stop training
                print(f"wandb disabled: {e}")

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def write_json(path: str | Path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def write_bench_result(
    name: str, metrics: dict, wall_s: float, command: str | None = None, results_dir: str | Path = BENCH_RESULTS
) -> Path:
    """Write `results_dir/<name>.json` as every bench does: the command that reproduces it
    (default `.venv/bin/python bench/<name>.py` and this process's arguments), the UTC date and
    time, the wall time in seconds (one decimal) and the bench's own `metrics`. Returns the path."""
    if command is None:
        command = " ".join([f".venv/bin/python bench/{name}.py", *sys.argv[1:]])
    path = Path(results_dir) / f"{name}.json"
    write_json(
        path,
        {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(wall_s, 1),
            "metrics": metrics,
        },
    )
    return path


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
