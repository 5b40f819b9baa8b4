"""Held-out metrics of a reward model on rankings, with bootstrap confidence intervals over prompts.

Everything works per prompt on plain lists: `scores[p]` are the model's scores of the responses
to prompt p, `ranks[p]` the human ranking as tiers (0 = best, equal = tied) and `responses[p]`
the response texts (for the length baselines). Per-prompt values are averaged over prompts, so a
prompt with many responses weighs as much as one with two.

Prompts whose responses are all tied have no pair to judge: they are left out of every metric
and counted as `all_tied_prompts`. The bootstrap over prompts is rlpost.compare.stats' (Efron and
Tibshirani 1993), the one the model comparison uses over problems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rlpost.compare.stats import mean_ci95

METRICS = (
    "pair_accuracy",
    "best_worst_accuracy",
    "kendall_tau",
    "log_loss",
    "longer_wins_pair_accuracy",
    "shorter_wins_pair_accuracy",
)


def untied_pairs(ranks: Sequence[int]) -> list[tuple[int, int]]:
    """Every pair (better, worse) of response indices whose ranks differ."""
    n = len(ranks)
    return [(i, j) for i in range(n) for j in range(n) if ranks[i] < ranks[j]]


def _pair_credit(better_score: float, worse_score: float) -> float:
    # A model that cannot tell the two apart is right half the time.
    if better_score > worse_score:
        return 1.0
    return 0.5 if better_score == worse_score else 0.0


def _mean_credit(scores: Sequence[float], pairs: list[tuple[int, int]]) -> float:
    if not pairs:
        raise ValueError("the ranking has no untied pair")
    return sum(_pair_credit(scores[i], scores[j]) for i, j in pairs) / len(pairs)


def pair_accuracy(scores: Sequence[float], ranks: Sequence[int]) -> float:
    """Fraction of the untied pairs of one prompt that the scores order correctly (equal scores: 0.5)."""
    return _mean_credit(scores, untied_pairs(ranks))


def best_worst_accuracy(scores: Sequence[float], ranks: Sequence[int]) -> float:
    """Pair accuracy on the pairs (response of the best tier, response of the worst tier) only.

    Taking every such pair, rather than one of them, keeps the value independent of the order in
    which tied responses are listed.
    """
    best, worst = min(ranks), max(ranks)
    tops = [i for i, tier in enumerate(ranks) if tier == best]
    bottoms = [j for j, tier in enumerate(ranks) if tier == worst]
    return _mean_credit(scores, [(i, j) for i in tops for j in bottoms if best < worst])


def pair_log_loss(scores: Sequence[float], ranks: Sequence[int]) -> float:
    """Mean over untied pairs of -log sigmoid(s_better - s_worse), in nats (Bradley–Terry likelihood)."""
    pairs = untied_pairs(ranks)
    if not pairs:
        raise ValueError("the ranking has no untied pair")
    return sum(_softplus(scores[j] - scores[i]) for i, j in pairs) / len(pairs)


def _softplus(x: float) -> float:
    # log(1 + e^x) without overflow for large |x|.
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b between two lists (ties in either list handled).

    Kendall 1945, "The treatment of ties in ranking problems":
        τ_b = (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)),
    with n0 = n(n-1)/2 and ties_x / ties_y the pairs tied in x / in y. When either list is
    constant τ-b is undefined; it is 0 here (no association), so a model that scores every
    response alike counts as uninformative rather than dropping out of the average.
    """
    if len(x) != len(y):
        raise ValueError(f"lists of different lengths: {len(x)} and {len(y)}")
    concordant = discordant = tied_x = tied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            tied_x += dx == 0
            tied_y += dy == 0
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    n0 = len(x) * (len(x) - 1) // 2
    denominator = math.sqrt((n0 - tied_x) * (n0 - tied_y))
    return (concordant - discordant) / denominator if denominator > 0 else 0.0


def bootstrap_ci(values: Sequence[float], seed: int = 0, resamples: int = 1000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of per-prompt `values`.

    Resamples the prompts with replacement `resamples` times and takes the 2.5th and 97.5th
    percentiles of the resampled means (rlpost.compare.stats.mean_ci95). Deterministic for a seed.
    """
    low, high = mean_ci95(values, resamples=resamples, seed=seed)["ci95"]
    return low, high


def ranking_metrics(
    scores: list[list[float]],
    ranks: list[list[int]],
    responses: list[list[str]],
    seed: int = 0,
    resamples: int = 1000,
) -> dict:
    """Held-out metrics of reward-model scores against rankings, each with a bootstrap 95% CI.

    Returns {name: {"mean": m, "ci95": [lo, hi]}} for the names in METRICS, plus counts:
    `prompts` (prompts with at least one untied pair, the ones averaged over), `pairs` (untied
    pairs in them) and `all_tied_prompts` (left out). `kendall_tau` is τ-b between the scores
    and the ranking (positive = agreement). The length baselines are pair accuracies of the
    scores ± character length of each response ("longer wins" / "shorter wins").
    Every metric resamples the same prompts with the same seed.
    """
    if not len(scores) == len(ranks) == len(responses):
        raise ValueError(f"{len(scores)} score lists, {len(ranks)} rankings, {len(responses)} response lists")
    per_prompt: dict[str, list[float]] = {name: [] for name in METRICS}
    pairs = all_tied = 0
    for prompt_scores, prompt_ranks, prompt_responses in zip(scores, ranks, responses):
        if not len(prompt_scores) == len(prompt_ranks) == len(prompt_responses):
            raise ValueError("a prompt's scores, ranks and responses differ in length")
        prompt_pairs = untied_pairs(prompt_ranks)
        if not prompt_pairs:
            all_tied += 1
            continue
        pairs += len(prompt_pairs)
        lengths = [float(len(text)) for text in prompt_responses]
        per_prompt["pair_accuracy"].append(_mean_credit(prompt_scores, prompt_pairs))
        per_prompt["best_worst_accuracy"].append(best_worst_accuracy(prompt_scores, prompt_ranks))
        per_prompt["kendall_tau"].append(kendall_tau_b(prompt_scores, [-tier for tier in prompt_ranks]))
        per_prompt["log_loss"].append(pair_log_loss(prompt_scores, prompt_ranks))
        per_prompt["longer_wins_pair_accuracy"].append(_mean_credit(lengths, prompt_pairs))
        per_prompt["shorter_wins_pair_accuracy"].append(_mean_credit([-n for n in lengths], prompt_pairs))
    if not pairs:
        raise ValueError("no prompt has an untied pair of responses")
    result: dict = {}
    for name, values in per_prompt.items():
        result[name] = mean_ci95(values, resamples=resamples, seed=seed)
    result.update(prompts=len(per_prompt["pair_accuracy"]), pairs=pairs, all_tied_prompts=all_tied)
    return result
