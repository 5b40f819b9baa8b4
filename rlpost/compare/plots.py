"""The report's plots (rlpost.compare.report), drawn with matplotlib from results.json.

pass_at_k.png    pass@k against k (log2 axis), one line per model, one panel per task
lengths.png      response lengths in tokens, right against wrong, one row per model
budget.png       accuracy against the token budget, one panel per task
reflection.png   reflection phrases per 1k tokens, one bar per model and task
"""

from __future__ import annotations

from pathlib import Path

from rlpost.compare.tables import by_int_key, missing

# The caption of each plot, by the name write_plots returns it under.
PLOTS = {
    "pass_at_k": "pass@k against the number of samples k",
    "lengths": "response lengths in tokens, right and wrong",
    "budget": "accuracy against the token budget",
    "reflection": "reflection phrases per 1k tokens",
}


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
        ax.bar(xs, [0 if missing(v) else v for v in values], width, color=_color(i), label=model)
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
