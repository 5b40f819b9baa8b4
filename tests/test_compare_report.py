"""The comparison report (rlpost.compare.report): its tables, plots, and the page in a real browser.

The run folder is crafted by hand in the format recipes/compare.py writes: 2 models × 2 tasks ×
4 problems, greedy correctness chosen so every outcome filter has a known answer, and completions
with markup characters that must come out escaped; a second folder has 5 models and k up to 64,
for a table wider than the window. The browser is Debian's chromium driven by Playwright, as in
test_label_page.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlpost.compare.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

MODELS = ["sft", "grpo"]
TASKS = ["arithmetic", "spelling_bee"]
SAMPLES = 4
# (task, problem) -> greedy correctness per model, and the number of its 4 samples that are right.
GREEDY = {
    ("arithmetic", 0): {"sft": True, "grpo": True},
    ("arithmetic", 1): {"sft": False, "grpo": True},
    ("arithmetic", 2): {"sft": False, "grpo": False},
    ("arithmetic", 3): {"sft": True, "grpo": False},
    ("spelling_bee", 0): {"sft": False, "grpo": True},
    ("spelling_bee", 1): {"sft": True, "grpo": True},
    ("spelling_bee", 2): {"sft": False, "grpo": False},
    ("spelling_bee", 3): {"sft": False, "grpo": True},
}
SAMPLED_RIGHT = {"sft": 1, "grpo": 3}
MARKUP = "<b>&</b> x < y"  # in sft's greedy completion of arithmetic problem 3


def task_stats(model: str, task: str) -> dict:
    """Per-model, per-task statistics; the numbers are chosen to be recognisable, not consistent."""
    sft = model == "sft"
    return {
        "problems": 4,
        "greedy_accuracy": 0.5 if sft else 0.75,
        "pass@1": {"mean": 0.27, "ci95": [0.22, 0.31]} if sft else {"mean": 0.625, "ci95": [0.5, 0.75]},
        "pass@k": {"1": 0.27, "2": 0.38, "4": 0.49} if sft else {"1": 0.625, "2": 0.8, "4": 0.9},
        "maj@k": {"1": 0.27, "2": 0.27, "4": 0.33} if sft else {"1": 0.625, "2": 0.625, "4": 0.75},
        "mean_tokens": {"correct": 41.2, "wrong": 55.0} if sft else {"correct": 30.5, "wrong": None},
        "lengths": {"correct": [40, 42, 41], "wrong": [50, 60, 55]} if sft else {"correct": [30, 31], "wrong": []},
        "truncated_frac": 0.05 if sft else 0.0,
        "reflection_per_1k_tokens": 0.8 if sft else 2.5,
        "tool_calls_per_answer": 0.0 if task == "arithmetic" else 1.25,
        "budget_accuracy": {"16": 0.05, "32": 0.2, "64": 0.3} if sft else {"16": 0.1, "32": 0.4, "64": 0.6},
    }


def pair(task: str) -> dict:
    a, b = "grpo", "sft"
    marks = [GREEDY[(task, p)] for p in range(4)]
    return {
        "a": a,
        "b": b,
        "task": task,
        "both": sum(m[a] and m[b] for m in marks),
        "only_a": sum(m[a] and not m[b] for m in marks),
        "only_b": sum(m[b] and not m[a] for m in marks),
        "neither": sum(not m[a] and not m[b] for m in marks),
        "mcnemar_p": 0.118,
        "mcnemar_mid_p": 0.0654,
        "pass1_diff": {"diff": 0.05, "ci95": [0.01, 0.09], "p_value": 0.02},
    }


def records() -> list[dict]:
    rows = []
    for (task, problem), greedy in GREEDY.items():
        prompt = f"{task} question {problem}: what is {problem} + 1?"
        for model in MODELS:
            completion = f"{model} says the answer is {problem + 1 if greedy[model] else 0}."
            if (model, task, problem) == ("sft", "arithmetic", 3):
                completion = MARKUP + " " + completion
            for sample in ["greedy", *range(SAMPLES)]:
                right = greedy[model] if sample == "greedy" else sample < SAMPLED_RIGHT[model]
                rows.append(
                    {
                        "model": model,
                        "task": task,
                        "problem": problem,
                        "prompt": prompt,
                        "answer": str(problem + 1),
                        "sample": sample,
                        "completion": completion if sample == "greedy" else f"sample {sample} of {model}",
                        "tokens": 10 + problem,
                        "reward": float(right),
                        "correct": right,
                    }
                )
    return rows


def write_inputs(run_dir: Path, results: dict) -> Path:
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    return run_dir


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Path]:
    results = {
        "models": MODELS,
        "tasks": TASKS,
        "setting": {"samples": SAMPLES, "temperature": 1.0, "max_new_tokens": 128, "budgets": [16, 32, 64]},
        "per_model": {m: {t: task_stats(m, t) for t in TASKS} for m in MODELS},
        "pairs": [pair(t) for t in TASKS],
    }
    return write_report(write_inputs(tmp_path_factory.mktemp("compare"), results))


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory) -> dict[str, Path]:
    """5 models and k = 1 … 64: the models table has 22 columns, far wider than 1300 px."""
    models = ["sft", "grpo", "answer_first", "think_sft", "think_grpo"]
    ks = [str(2**e) for e in range(7)]
    per_model = {}
    for model in models:
        stats = task_stats("sft", TASKS[0])
        stats.update({"pass@k": dict.fromkeys(ks, 0.5), "maj@k": dict.fromkeys(ks, 0.25)})
        per_model[model] = {t: stats for t in TASKS}
    results = {
        "models": models,
        "tasks": TASKS,
        "setting": {"samples": 64, "temperature": 1.0, "max_new_tokens": 128, "budgets": [16, 32, 64]},
        "per_model": per_model,
        "pairs": [pair(t) for t in TASKS],
    }
    return write_report(write_inputs(tmp_path_factory.mktemp("compare_wide"), results))


def test_markdown_tables(report):
    md = report["md"].read_text()
    assert md.startswith("# Model comparison\n")
    assert "4 samples per problem at temperature 1.0" in md
    assert (
        "| model | problems | greedy | pass@1 [95 % CI] | pass@2 | pass@4 | maj@1 | maj@2 | maj@4 "
        "| tokens (right) | tokens (wrong) | truncated | reflection / 1k tokens | tool calls / answer |"
    ) in md
    assert (
        "| sft | 4 | 50.0 % | 27.0 % [22.0, 31.0] | 38.0 % | 49.0 % | 27.0 % | 27.0 % | 33.0 % "
        "| 41.2 | 55.0 | 5.0 % | 0.80 | 0.00 |"
    ) in md
    # grpo has no wrong answers on record: its mean length of wrong answers is shown as missing.
    assert (
        "| grpo | 4 | 75.0 % | 62.5 % [50.0, 75.0] | 80.0 % | 90.0 % | 62.5 % | 62.5 % | 75.0 % "
        "| 30.5 | – | 0.0 % | 2.50 | 1.25 |"
    ) in md
    assert "### arithmetic: pairs (greedy)" in md and "### spelling_bee: pairs (greedy)" in md
    assert (
        "| A | B | both right | only A | only B | neither | McNemar exact p | McNemar mid-p "
        "| pass@1 A − B, points [95 % CI] | p (pass@1) |"
    ) in md
    assert "| grpo | sft | 1 | 1 | 1 | 1 | 0.118 | 0.065 | +5.0 [+1.0, +9.0] | 0.020 |" in md
    assert "| grpo | sft | 1 | 2 | 0 | 1 | 0.118 | 0.065 | +5.0 [+1.0, +9.0] | 0.020 |" in md
    assert "| task | model | ≤ 16 tokens | ≤ 32 tokens | ≤ 64 tokens |" in md
    assert "| spelling_bee | grpo | 10.0 % | 40.0 % | 60.0 % |" in md


def test_plots_are_pngs(report):
    for name in ("pass_at_k", "lengths", "budget", "reflection"):
        assert report[name].name == f"{name}.png"
        assert report[name].read_bytes().startswith(PNG_SIGNATURE), name


def test_html_is_self_contained_and_escaped(report):
    page = report["html"].read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert page.count('src="data:image/png;base64,') == 4
    assert "&lt;b&gt;&amp;&lt;/b&gt; x &lt; y" in page
    assert "<b>&" not in page
    assert page.count('class="problem"') == 8
    assert "27.0 % [22.0, 31.0]" in page and "%%" not in page
    assert page.count('<div class="table-scroll"><table>') == 5  # 2 tasks × (models, pairs) + budget
    assert "<td>0.118</td><td>0.065</td>" in page


def test_command_line_writes_the_report(report, tmp_path):
    for name in ("results.json", "records.jsonl"):
        shutil.copy(report["md"].parent / name, tmp_path / name)
    done = subprocess.run(
        [sys.executable, "-m", "rlpost.compare.report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    written = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert list(written) == ["md", "html", "pass_at_k", "lengths", "budget", "reflection"]
    assert all(Path(path).parent == tmp_path and Path(path).is_file() for path in written.values())
    assert Path(written["md"]).read_text() == report["md"].read_text()

    usage = subprocess.run([sys.executable, "-m", "rlpost.compare.report"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 1 and usage.stderr.startswith("usage: python -m rlpost.compare.report")


def visible_problems(page) -> list[tuple[str, int]]:
    return [
        (task, int(problem))
        for task, problem in page.eval_on_selector_all(
            ".problem", "els => els.filter(e => !e.hidden).map(e => [e.dataset.task, e.dataset.problem])"
        )
    ]


def test_page_filters_in_a_browser(browser, report):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Any request that leaves the file would be a broken offline page.
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(report["html"].as_uri())
        expect(page.locator("#shown-count")).to_have_text("8 of 8 problems shown")
        assert len(visible_problems(page)) == 8

        # The markup in a completion is shown as text, never parsed.
        completion = page.locator('.problem[data-task="arithmetic"][data-problem="3"] .completion[data-model="sft"]')
        expect(completion.locator("pre")).to_contain_text(MARKUP)
        assert completion.locator("b").count() == 0
        expect(completion.locator(".mark")).to_have_text("✓")

        page.select_option("#task-filter", "arithmetic")
        expect(page.locator("#shown-count")).to_have_text("4 of 8 problems shown")
        assert visible_problems(page) == [("arithmetic", p) for p in range(4)]

        labels = page.eval_on_selector_all("#outcome-filter option", "els => els.map(e => e.textContent)")
        assert labels == ["all", "both right", "both wrong", "sft right, grpo wrong", "grpo right, sft wrong"]
        page.select_option("#outcome-filter", label="grpo right, sft wrong")
        expected = [key for key, g in GREEDY.items() if g["grpo"] and not g["sft"] and key[0] == "arithmetic"]
        expect(page.locator("#shown-count")).to_have_text(f"{len(expected)} of 8 problems shown")
        assert visible_problems(page) == expected == [("arithmetic", 1)]

        page.select_option("#task-filter", "")
        expected = [key for key, g in GREEDY.items() if g["grpo"] and not g["sft"]]
        expect(page.locator("#shown-count")).to_have_text(f"{len(expected)} of 8 problems shown")
        assert visible_problems(page) == expected

        page.select_option("#outcome-filter", label="both wrong")
        assert visible_problems(page) == [("arithmetic", 2), ("spelling_bee", 2)]

        width = page.eval_on_selector("#plot-pass_at_k", "img => img.complete && img.naturalWidth")
        assert width > 0
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
        assert errors == []
    finally:
        context.close()


def test_wide_table_scrolls_in_its_own_box(browser, wide_report):
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    try:
        page.goto(wide_report["html"].as_uri())
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        boxes = page.eval_on_selector_all(
            ".table-scroll",
            """els => els.map(e => ({title: e.previousElementSibling.textContent, scroll: e.scrollWidth,
                                     client: e.clientWidth, right: e.getBoundingClientRect().right}))""",
        )
        assert [box["title"] for box in boxes] == [
            "arithmetic: models",
            "arithmetic: pairs (greedy)",
            "spelling_bee: models",
            "spelling_bee: pairs (greedy)",
            "accuracy against the token budget",
        ]
        assert all(box["right"] <= 1300 for box in boxes)
        wide, narrow = boxes[0], boxes[1]
        assert wide["scroll"] > wide["client"] + 200  # the models table is far wider than its box
        assert narrow["scroll"] == narrow["client"]

        # Scrolling the wide table moves it inside its box; the page stays put.
        scrolled = page.eval_on_selector(".table-scroll", "e => { e.scrollLeft = 300; return e.scrollLeft; }")
        assert scrolled == 300
        assert page.evaluate("window.scrollX") == 0
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        context.close()
