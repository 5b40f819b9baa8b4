"""The report of a comparison run (recipes/compare.py): tables, plots and transcripts side by side.

    write_report(run_dir)       reads <run_dir>/results.json and <run_dir>/records.jsonl, writes
                                the files below into run_dir and returns their paths by name

    report.md        per task, one row per model (greedy accuracy, pass@1 with its 95 % interval,
                     pass@k and maj@k, mean tokens of right and wrong answers, truncation,
                     reflection phrases per 1k tokens, tool calls per answer); per pair of models
                     the 2x2 table of greedy correctness, McNemar's p and the pass@1 difference;
                     accuracy against the token budget
    pass_at_k.png    pass@k against k (log2 axis), one line per model, one panel per task
    lengths.png      response lengths in tokens, right against wrong, one row per model
    budget.png       accuracy against the token budget, one panel per task
    reflection.png   reflection phrases per 1k tokens, one bar per model and task
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
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).with_name("compare_report.html")
PLOTS = {
    "pass_at_k": "pass@k against the number of samples k",
    "lengths": "response lengths in tokens, right and wrong",
    "budget": "accuracy against the token budget",
    "reflection": "reflection phrases per 1k tokens",
}
RIGHT, WRONG = "\u2713", "\u2717"


@dataclass
class Table:
    """A table for both outputs: cells are plain text, escaped by the renderer."""

    title: str
    header: list[str]
    rows: list[list[str]]


# ---------------------------------------------------------------------------------------------
# Formatting


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def percent(value) -> str:
    """0.27 -> '27.0 %'."""
    return "–" if _missing(value) else f"{100 * value:.1f} %"


def percent_ci(mean, ci95) -> str:
    """A rate with its interval, both in percent: '27.0 % [22.0, 31.0]'."""
    if _missing(mean) or not ci95 or any(map(_missing, ci95)):
        return percent(mean)
    return f"{100 * mean:.1f} % [{100 * ci95[0]:.1f}, {100 * ci95[1]:.1f}]"


def points_ci(diff: dict) -> str:
    """A difference of rates in percentage points with its interval: '+5.0 [+1.0, +9.0]'."""
    if _missing(diff.get("diff")):
        return "–"
    low, high = diff.get("ci95") or (None, None)
    interval = "" if _missing(low) or _missing(high) else f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{100 * diff['diff']:+.1f}{interval}"


def p_value(p) -> str:
    """Three decimals; below 0.001 as '< 0.001'."""
    if _missing(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def number(value, digits: int = 1) -> str:
    return "–" if _missing(value) else f"{value:.{digits}f}"


def by_int_key(mapping: dict) -> list[tuple[int, float]]:
    """{"1": .., "8": .., "2": ..} as [(1, ..), (2, ..), (8, ..)]: the keys are strings of ints."""
    return sorted((int(k), v) for k, v in mapping.items())


# ---------------------------------------------------------------------------------------------
# Tables


def model_table(results: dict, task: str) -> Table:
    """One row per model for one task."""
    models = results["models"]
    stats = [results["per_model"][m].get(task, {}) for m in models]
    # pass@1 has its own column with its interval
    ks = sorted({k for s in stats for k, _ in by_int_key(s.get("pass@k", {})) if k != 1})
    majority_ks = sorted({k for s in stats for k, _ in by_int_key(s.get("maj@k", {}))})
    header = ["model", "problems", "greedy", "pass@1 [95 % CI]"]
    header += [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in majority_ks]
    header += ["tokens (right)", "tokens (wrong)", "truncated", "reflection / 1k tokens", "tool calls / answer"]
    rows = []
    for model, s in zip(models, stats):
        pass1 = s.get("pass@1", {})
        pass_k, maj_k = s.get("pass@k", {}), s.get("maj@k", {})
        tokens = s.get("mean_tokens", {})
        rows.append(
            [model, str(s.get("problems", "–")), percent(s.get("greedy_accuracy"))]
            + [percent_ci(pass1.get("mean"), pass1.get("ci95"))]
            + [percent(pass_k.get(str(k))) for k in ks]
            + [percent(maj_k.get(str(k))) for k in majority_ks]
            + [number(tokens.get("correct")), number(tokens.get("wrong"))]
            + [percent(s.get("truncated_frac")), number(s.get("reflection_per_1k_tokens"), 2)]
            + [number(s.get("tool_calls_per_answer"), 2)]
        )
    return Table(f"{task}: models", header, rows)


def pair_table(results: dict, task: str) -> Table | None:
    """One row per pair of models for one task (None: the run compared no pair on it)."""
    pairs = [p for p in results.get("pairs", []) if p["task"] == task]
    if not pairs:
        return None
    header = ["A", "B", "both right", "only A", "only B", "neither", "McNemar p (greedy)"]
    header += ["pass@1 A − B, points [95 % CI]", "p (pass@1)"]
    rows = [
        [p["a"], p["b"], str(p["both"]), str(p["only_a"]), str(p["only_b"]), str(p["neither"])]
        + [p_value(p.get("mcnemar_p")), points_ci(p.get("pass1_diff", {}))]
        + [p_value(p.get("pass1_diff", {}).get("p_value"))]
        for p in pairs
    ]
    return Table(f"{task}: pairs (greedy)", header, rows)


def budget_table(results: dict) -> Table:
    """Accuracy when the answer must end within each token budget, per task and model."""
    budgets = results.get("setting", {}).get("budgets") or sorted(
        {
            k
            for m in results["per_model"].values()
            for s in m.values()
            for k, _ in by_int_key(s.get("budget_accuracy", {}))
        }
    )
    rows = [
        [task, model]
        + [percent(results["per_model"][model][task].get("budget_accuracy", {}).get(str(b))) for b in budgets]
        for task in results["tasks"]
        for model in results["models"]
        if task in results["per_model"][model]
    ]
    return Table("accuracy against the token budget", ["task", "model"] + [f"≤ {b} tokens" for b in budgets], rows)


def all_tables(results: dict) -> list[Table]:
    tables = []
    for task in results["tasks"]:
        tables.append(model_table(results, task))
        pairs = pair_table(results, task)
        if pairs:
            tables.append(pairs)
    return tables + [budget_table(results)]


def setting_line(results: dict) -> str:
    s = results.get("setting", {})
    return (
        f"Models: {', '.join(results['models'])}. Tasks: {', '.join(results['tasks'])}. "
        f"{s.get('samples', '?')} samples per problem at temperature {s.get('temperature', '?')} "
        f"and one greedy completion, at most {s.get('max_new_tokens', '?')} new tokens each."
    )


def markdown(table: Table) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [f"### {table.title}", "", row(table.header), row(["---"] * len(table.header))]
    return "\n".join(lines + [row(r) for r in table.rows]) + "\n"


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table.rows)
    return f"<h3>{html.escape(table.title)}</h3>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------------------------
# Plots


def _figure(panels: int, width: float = 4.5, height: float = 3.4, rows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A figure of its own on the Agg canvas: no pyplot state, no display needed.
    fig = Figure(figsize=(width * panels, height * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, panels, squeeze=False)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, metadata={"Software": None})  # no matplotlib URL or version in the file
    return path


def _color(index: int) -> str:
    return f"C{index % 10}"


def plot_curves(results: dict, key: str, xlabel: str, ylabel: str, path: Path) -> Path:
    """One panel per task of per_model[model][task][key] ({"k": rate}) against k on a log2 axis."""
    fig, axes = _figure(len(results["tasks"]))
    for ax, task in zip(axes[0], results["tasks"]):
        for i, model in enumerate(results["models"]):
            points = by_int_key(results["per_model"][model].get(task, {}).get(key, {}))
            if points:
                ax.plot(*zip(*points), marker="o", color=_color(i), label=model)
                ax.set_xscale("log", base=2)  # before the ticks: setting the scale resets their labels
                ax.set_xticks([x for x, _ in points], [str(x) for x, _ in points])
        ax.set_ylim(0, 1.02)
        ax.set(title=task, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    return _save(fig, path)


def plot_lengths(results: dict, path: Path) -> Path:
    """Histograms of response lengths, right against wrong: a row per model, a column per task."""
    models, tasks = results["models"], results["tasks"]
    fig, axes = _figure(len(tasks), width=4.5, height=2.6, rows=len(models))
    for column, task in enumerate(tasks):
        lengths = {m: results["per_model"][m].get(task, {}).get("lengths", {}) for m in models}
        longest = max([n for m in models for kind in ("correct", "wrong") for n in lengths[m].get(kind, [])] + [1])
        for row, model in enumerate(models):
            ax = axes[row][column]
            # The same bins in every row of a task, so the models' shapes compare directly.
            for kind, label, color in (("correct", "right", "tab:green"), ("wrong", "wrong", "tab:red")):
                values = lengths[model].get(kind, [])
                ax.hist(values, bins=20, range=(0, longest), color=color, alpha=0.55, label=f"{label} ({len(values)})")
            ax.set_title(f"{model} · {task}")
            ax.set_xlabel("tokens")
            ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_reflection(results: dict, path: Path) -> Path:
    """Grouped bars: reflection phrases per 1k tokens, a group per task, a bar per model."""
    models, tasks = results["models"], results["tasks"]
    fig, axes = _figure(1, width=max(4.5, 1.2 * len(models) * len(tasks)))
    ax, width = axes[0][0], 0.8 / len(models)
    for i, model in enumerate(models):
        values = [results["per_model"][model].get(task, {}).get("reflection_per_1k_tokens") for task in tasks]
        xs = [t + (i - (len(models) - 1) / 2) * width for t in range(len(tasks))]
        ax.bar(xs, [0 if _missing(v) else v for v in values], width, color=_color(i), label=model)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylabel="reflection phrases / 1k tokens", title="reflection phrases")
    ax.legend(loc="best")
    return _save(fig, path)


def write_plots(results: dict, run_dir: Path) -> dict[str, Path]:
    return {
        "pass_at_k": plot_curves(results, "pass@k", "k (samples)", "pass@k", run_dir / "pass_at_k.png"),
        "lengths": plot_lengths(results, run_dir / "lengths.png"),
        "budget": plot_curves(results, "budget_accuracy", "token budget", "accuracy", run_dir / "budget.png"),
        "reflection": plot_reflection(results, run_dir / "reflection.png"),
    }


# ---------------------------------------------------------------------------------------------
# Transcripts and the page


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
