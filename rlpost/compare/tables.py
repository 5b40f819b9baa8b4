"""The report's tables (rlpost.compare.report): per task a row per model and a row per pair of
models, and accuracy against the token budget, as Markdown and as HTML.

Cells are plain text formatted from results.json (recipes/compare.py writes it); the renderers
escape them. Missing or non-finite numbers show as '–'.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass


@dataclass
class Table:
    """A table for both outputs: cells are plain text, escaped by the renderer."""

    title: str
    header: list[str]
    rows: list[list[str]]


# ---------------------------------------------------------------------------------------------
# Formatting


def missing(value) -> bool:
    """No number to show: None, NaN or infinite."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def percent(value) -> str:
    """0.27 -> '27.0 %'."""
    return "–" if missing(value) else f"{100 * value:.1f} %"


def percent_ci(mean, ci95) -> str:
    """A rate with its interval, both in percent: '27.0 % [22.0, 31.0]'."""
    if missing(mean) or not ci95 or any(map(missing, ci95)):
        return percent(mean)
    return f"{100 * mean:.1f} % [{100 * ci95[0]:.1f}, {100 * ci95[1]:.1f}]"


def points_ci(diff: dict) -> str:
    """A difference of rates in percentage points with its interval: '+5.0 [+1.0, +9.0]'."""
    if missing(diff.get("diff")):
        return "–"
    low, high = diff.get("ci95") or (None, None)
    interval = "" if missing(low) or missing(high) else f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{100 * diff['diff']:+.1f}{interval}"


def p_value(p) -> str:
    """Three decimals; below 0.001 as '< 0.001'."""
    if missing(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def number(value, digits: int = 1) -> str:
    return "–" if missing(value) else f"{value:.{digits}f}"


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
    # The mid-p beside the exact p: the exact test is conservative (Fagerland et al. 2013).
    header = ["A", "B", "both right", "only A", "only B", "neither", "McNemar exact p", "McNemar mid-p"]
    header += ["pass@1 A − B, points [95 % CI]", "p (pass@1)"]
    rows = [
        [p["a"], p["b"], str(p["both"]), str(p["only_a"]), str(p["only_b"]), str(p["neither"])]
        + [p_value(p.get("mcnemar_p")), p_value(p.get("mcnemar_mid_p")), points_ci(p.get("pass1_diff", {}))]
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
    # Each table scrolls sideways in its own box, so a wide one never widens the page.
    return (
        f"<h3>{html.escape(table.title)}</h3>\n"
        f'<div class="table-scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )
