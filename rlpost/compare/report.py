"""The report of a comparison run (recipes/compare.py): tables, plots and transcripts side by side.

    write_report(run_dir)       reads <run_dir>/results.json and <run_dir>/records.jsonl, writes
                                the files below into run_dir and returns their paths by name

    report.md        the tables (rlpost/compare/tables.py): per task, one row per model (greedy
                     accuracy, pass@1 with its 95 % interval, pass@k and maj@k, mean tokens of
                     right and wrong answers, truncation, reflection phrases per 1k tokens, tool
                     calls per answer); per pair of models the 2x2 table of greedy correctness,
                     McNemar's exact p and mid-p, and the pass@1 difference; accuracy against the
                     token budget
    *.png            the plots (rlpost/compare/plots.py): pass_at_k, lengths, budget, reflection
    report.html      one self-contained page (plots embedded, inline CSS and JS, no external URL):
                     the tables, the plots, and each problem's greedy completions side by side,
                     filtered by task and by which models got the problem right

From the shell, for a run folder that already holds both inputs:
    python -m rlpost.compare.report runs/compare
"""

from __future__ import annotations

import base64
import html
import json
import re
import sys
from pathlib import Path

from rlpost.compare.plots import PLOTS, write_plots
from rlpost.compare.tables import Table, all_tables, html_table, markdown, setting_line

TEMPLATE = Path(__file__).with_name("report.html")
RIGHT, WRONG = "\u2713", "\u2717"


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def group_problems(records: list[dict], tasks: list[str]) -> list[dict]:
    """One entry per (task, problem) in task order, then problem order: prompt, gold answer, and
    per model its greedy record and (right, total) over its sampled completions."""
    problems: dict[tuple, dict] = {}
    for r in records:
        entry = problems.setdefault(
            (r["task"], r["problem"]),
            {"task": r["task"], "problem": r["problem"], "prompt": r["prompt"], "answer": r["answer"], "models": {}},
        )
        model = entry["models"].setdefault(r["model"], {"greedy": None, "right": 0, "sampled": 0})
        if r["sample"] == "greedy":
            model["greedy"] = r
        else:
            model["sampled"] += 1
            model["right"] += bool(r["correct"])

    def order(key: tuple) -> tuple:
        task, problem = key
        task_rank = tasks.index(task) if task in tasks else len(tasks)
        return (task_rank, task, 0, problem, "") if isinstance(problem, int) else (task_rank, task, 1, 0, str(problem))

    return [problems[key] for key in sorted(problems, key=order)]


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=1, ensure_ascii=False)


def problem_block(problem: dict, models: list[str]) -> str:
    """The HTML of one problem; data-correct holds each model's greedy mark in model order
    ('1' right, '0' wrong, '-' no greedy completion), which the outcome filter reads."""
    marks, columns = "", []
    for model in models:
        entry = problem["models"].get(model, {"greedy": None, "right": 0, "sampled": 0})
        greedy = entry["greedy"]
        if greedy is None:
            marks += "-"
            columns.append(
                f'<div class="completion missing" data-model="{html.escape(model)}">'
                f"<h4>{html.escape(model)}</h4><p>no greedy completion</p></div>"
            )
            continue
        right = bool(greedy["correct"])
        marks += "1" if right else "0"
        sampled = f" · samples {entry['right']}/{entry['sampled']} right" if entry["sampled"] else ""
        columns.append(
            f'<div class="completion {"right" if right else "wrong"}" data-model="{html.escape(model)}">'
            f'<h4><span class="mark">{RIGHT if right else WRONG}</span> {html.escape(model)}</h4>'
            f'<p class="meta">{greedy.get("tokens", "?")} tokens{sampled}</p>'
            f"<pre>{html.escape(_text(greedy['completion']))}</pre></div>"
        )
    task, number_ = html.escape(problem["task"]), html.escape(str(problem["problem"]))
    return (
        f'<section class="problem" data-task="{task}" data-problem="{number_}" data-correct="{marks}">'
        f"<h3>{task} · problem {number_}</h3>"
        f'<pre class="prompt">{html.escape(_text(problem["prompt"]))}</pre>'
        f'<p class="gold">gold answer: <code>{html.escape(_text(problem["answer"]))}</code></p>'
        f'<div class="completions" style="--models: {len(models)}">{"".join(columns)}</div></section>'
    )


def outcome_options(models: list[str]) -> list[tuple[str, str]]:
    """(value, label) of the outcome filter: everyone right, everyone wrong, every ordered pair."""
    everyone = "both" if len(models) == 2 else "all"
    options = [("all", "all"), ("all-right", f"{everyone} right"), ("all-wrong", f"{everyone} wrong")]
    options += [
        (f"pair:{i}:{j}", f"{a} right, {b} wrong") for i, a in enumerate(models) for j, b in enumerate(models) if i != j
    ]
    return options


def _options(pairs: list[tuple[str, str]]) -> str:
    return "".join(f'<option value="{html.escape(v)}">{html.escape(label)}</option>' for v, label in pairs)


def render_html(results: dict, tables: list[Table], plots: dict[str, Path], problems: list[dict]) -> str:
    """The page: the template with the tables, the plots as data URIs and the transcripts."""
    images = "".join(
        f'<figure><img id="plot-{name}" alt="{html.escape(PLOTS[name])}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}"><figcaption>{html.escape(PLOTS[name])}'
        "</figcaption></figure>"
        for name, path in plots.items()
    )
    parts = {
        "SETTING": html.escape(setting_line(results)),
        "TABLES": "\n".join(map(html_table, tables)),
        "PLOTS": images,
        "TASK_OPTIONS": _options([("", "all tasks")] + [(t, t) for t in results["tasks"]]),
        "OUTCOME_OPTIONS": _options(outcome_options(results["models"])),
        "PROBLEMS": "\n".join(problem_block(p, results["models"]) for p in problems),
        "TOTAL": str(len(problems)),
    }
    # One pass over the template: text put in is never scanned for markers again.
    return re.sub(r"%%([A-Z_]+)%%", lambda m: parts[m.group(1)], TEMPLATE.read_text(encoding="utf-8"))


def write_report(run_dir: Path) -> dict[str, Path]:
    """Write report.md, the four PNGs and report.html into run_dir from its results.json and
    records.jsonl; returns {"md", "html", "pass_at_k", "lengths", "budget", "reflection"} paths."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    tables = all_tables(results)
    md = run_dir / "report.md"
    md.write_text(
        "# Model comparison\n\n" + setting_line(results) + "\n\n" + "\n".join(map(markdown, tables)), encoding="utf-8"
    )
    plots = write_plots(results, run_dir)
    problems = group_problems(read_records(run_dir / "records.jsonl"), results["tasks"])
    page = run_dir / "report.html"
    page.write_text(render_html(results, tables, plots, problems), encoding="utf-8")
    return {"md": md, "html": page, **plots}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rlpost.compare.report <run_dir with results.json and records.jsonl>")
    for name, written in write_report(Path(sys.argv[1])).items():
        print(f"{name}: {written}")
