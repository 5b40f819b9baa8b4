"""Held-out ranking metrics against values worked out by hand."""

import math
import random

import pytest

from rlpost.compare.stats import mean_ci95
from rlpost.rlhf.ranking_metrics import (
    METRICS,
    best_worst_accuracy,
    bootstrap_ci,
    kendall_tau_b,
    pair_accuracy,
    pair_log_loss,
    ranking_metrics,
)

# Prompt A: strict ranking 0 > 1 > 2; the scores get (0,1) and (0,2) right and (1,2) wrong.
A_SCORES, A_RANKS, A_TEXTS = [3.0, 1.0, 2.0], [0, 1, 2], ["aaaa", "bb", "cccccc"]
# Prompt B: 0 and 1 tied above 2; every score equal, so every pair is a coin flip.
B_SCORES, B_RANKS, B_TEXTS = [1.0, 1.0, 1.0], [0, 0, 1], ["x", "yy", "zz"]
# Prompt C: all tied, nothing to judge.
C_SCORES, C_RANKS, C_TEXTS = [0.5, 0.1], [0, 0], ["p", "q"]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pair_accuracy_by_hand():
    assert pair_accuracy(A_SCORES, A_RANKS) == pytest.approx(2 / 3)
    assert pair_accuracy(B_SCORES, B_RANKS) == 0.5
    # ties in the ranking are skipped; 1 and 2 have equal scores: (4 + 0.5) / 5
    assert pair_accuracy([2.0, 1.0, 1.0, 0.0], [0, 0, 1, 2]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="untied"):
        pair_accuracy(C_SCORES, C_RANKS)


def test_best_worst_accuracy_uses_every_best_worst_pair():
    assert best_worst_accuracy(A_SCORES, A_RANKS) == 1.0  # 3 > 2
    assert best_worst_accuracy(B_SCORES, B_RANKS) == 0.5
    # best tier {0, 1}, worst tier {3, 4}: 2>0, 2<5, 1>0, 1<5 -> 2 of 4
    assert best_worst_accuracy([2.0, 1.0, 9.0, 0.0, 5.0], [0, 0, 1, 2, 2]) == 0.5


def test_kendall_tau_b_by_hand():
    # strict: concordant 2, discordant 1 of 3 pairs
    assert kendall_tau_b(A_SCORES, [0, -1, -2]) == pytest.approx(1 / 3)
    # one pair tied in x, one tied in y: (4 - 0) / sqrt((6 - 1) * (6 - 1))
    assert kendall_tau_b([2, 1, 1, 0], [0, 0, -1, -2]) == pytest.approx(0.8)
    # concordant 3, discordant 1, one tie in each list: 2 / sqrt(5 * 5)
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau_b([1, 1, 1], [0, 1, 2]) == 0.0  # constant list: defined as 0


def test_kendall_tau_b_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    generator = random.Random(3)
    for _ in range(20):
        x = [generator.randint(0, 3) for _ in range(7)]
        y = [generator.randint(0, 2) for _ in range(7)]
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_pair_log_loss_by_hand():
    expected = (softplus(-2.0) + softplus(-1.0) + softplus(1.0)) / 3
    assert pair_log_loss(A_SCORES, A_RANKS) == pytest.approx(expected)
    assert pair_log_loss(B_SCORES, B_RANKS) == pytest.approx(math.log(2))
    assert pair_log_loss([1000.0, -1000.0], [1, 0]) == pytest.approx(2000.0)  # no overflow


def test_ranking_metrics_by_hand():
    metrics = ranking_metrics(
        [A_SCORES, B_SCORES, C_SCORES], [A_RANKS, B_RANKS, C_RANKS], [A_TEXTS, B_TEXTS, C_TEXTS], resamples=200
    )
    assert set(metrics) == {*METRICS, "prompts", "pairs", "all_tied_prompts"}
    assert (metrics["prompts"], metrics["pairs"], metrics["all_tied_prompts"]) == (2, 5, 1)
    expected = {
        "pair_accuracy": (2 / 3 + 0.5) / 2,
        "best_worst_accuracy": (1.0 + 0.5) / 2,
        "kendall_tau": (1 / 3 + 0.0) / 2,
        "log_loss": ((softplus(-2.0) + softplus(-1.0) + softplus(1.0)) / 3 + math.log(2)) / 2,
        # A lengths 4, 2, 6: longer wins (0,1) only; B lengths 1, 2, 2: (0,2) lost, (1,2) equal
        "longer_wins_pair_accuracy": (1 / 3 + 0.25) / 2,
        "shorter_wins_pair_accuracy": (2 / 3 + 0.75) / 2,
    }
    for name, value in expected.items():
        assert metrics[name]["mean"] == pytest.approx(value), name
        low, high = metrics[name]["ci95"]
        assert low <= metrics[name]["mean"] <= high


def test_ranking_metrics_errors():
    with pytest.raises(ValueError, match="untied"):
        ranking_metrics([C_SCORES], [C_RANKS], [C_TEXTS])
    with pytest.raises(ValueError, match="length"):
        ranking_metrics([[1.0, 2.0]], [[0, 1, 2]], [["a", "b"]])


def test_bootstrap_ci_by_hand():
    assert bootstrap_ci([0.7] * 5) == (pytest.approx(0.7), pytest.approx(0.7))
    # two prompts: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0], resamples=1000) == (0.0, 1.0)


def test_bootstrap_ci_is_the_comparison_bootstrap():
    # One bootstrap for the reward model's prompts and the model comparison's problems.
    values = [0.0, 1.0, 0.5, 0.25, 1.0, 0.75]
    assert bootstrap_ci(values, seed=4, resamples=300) == tuple(mean_ci95(values, resamples=300, seed=4)["ci95"])
    # Means summed with math.fsum: a constant comes back exactly (a plain sum gives 0.09999999999999999).
    assert bootstrap_ci([0.1] * 7) == (0.1, 0.1)
    with pytest.raises(ValueError, match="resamples must be at least 1"):
        bootstrap_ci([0.5, 1.0], resamples=0)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])


def test_bootstrap_ci_contains_the_mean_shrinks_and_is_seeded():
    generator = random.Random(0)
    values = [generator.random() for _ in range(400)]
    few, many = values[:25], values
    few_low, few_high = bootstrap_ci(few, seed=1)
    many_low, many_high = bootstrap_ci(many, seed=1)
    assert few_low < sum(few) / len(few) < few_high
    assert many_low < sum(many) / len(many) < many_high
    # the width falls like 1 / sqrt(n): 16x the prompts, about a quarter of the width
    assert (many_high - many_low) < 0.4 * (few_high - few_low)
    assert bootstrap_ci(few, seed=1) == (few_low, few_high)
    assert bootstrap_ci(few, seed=2) != (few_low, few_high)


def test_ranking_metrics_deterministic_for_a_seed():
    generator = random.Random(5)
    scores = [[generator.gauss(0, 1) for _ in range(4)] for _ in range(30)]
    ranks = [generator.sample(range(4), 4) for _ in range(30)]
    texts = [["a" * generator.randint(1, 20) for _ in range(4)] for _ in range(30)]
    first = ranking_metrics(scores, ranks, texts, seed=3, resamples=300)
    assert ranking_metrics(scores, ranks, texts, seed=3, resamples=300) == first
    assert ranking_metrics(scores, ranks, texts, seed=4, resamples=300) != first
