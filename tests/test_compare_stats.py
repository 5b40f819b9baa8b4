"""pass@k, maj@k, McNemar's exact test and the bootstraps against hand-computed or brute-force values."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from rlpost.compare.stats import (
    maj_at_k,
    mcnemar,
    mean_ci95,
    mean_pass_at_k,
    paired_bootstrap,
    pass_at_k,
    pass_at_k_curve,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in subset) for subset in subsets), len(subsets))


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_pass_at_k_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), rel=1e-12, abs=1e-15)


def test_pass_at_k_equals_the_published_formula():
    n, c, k = 100, 7, 10
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12)


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k: every 3 samples include a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "bad"),
    [(5, 2, 0, "k"), (5, 2, 6, "k"), (5, -1, 2, "c"), (5, 6, 2, "c")],
)
def test_pass_at_k_rejects_bad_arguments(n, c, k, bad):
    with pytest.raises(ValueError, match=rf"^{bad} must"):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_over_problems():
    assert mean_pass_at_k([0, 4, 2], n=4, k=1) == pytest.approx((0 + 1 + 0.5) / 3, rel=1e-12)
    with pytest.raises(ValueError):
        mean_pass_at_k([], n=4, k=1)


def test_pass_at_k_curve_keys_are_powers_of_two_and_n():
    assert list(pass_at_k_curve([3, 0, 16], 16)) == [1, 2, 4, 8, 16]
    curve = pass_at_k_curve([3, 0, 12], 12)
    assert list(curve) == [1, 2, 4, 8, 12]
    assert curve[12] == pytest.approx(2 / 3, rel=1e-12)
    assert curve[1] == pytest.approx((3 / 12 + 0 + 1) / 3, rel=1e-12)


def test_maj_at_k_majority_of_correct_answers():
    problem = [("4", True), ("5", False), ("4", True), (None, False), ("4", True)]
    assert maj_at_k([problem], k=5) == 1.0


def test_maj_at_k_majority_of_wrong_answers():
    problem = [("4", True), ("5", False), ("5", False), (None, False), ("5", False)]
    assert maj_at_k([problem], k=5) == 0.0
    # Only the first k samples vote: with k = 1 the correct "4" wins alone.
    assert maj_at_k([problem], k=1) == 1.0


def test_maj_at_k_tie_goes_to_the_earliest_answer():
    wrong_first = [(None, False), ("5", False), ("4", True), ("4", True), ("5", False)]
    right_first = [("4", True), ("5", False), ("5", False), ("4", True), (None, False)]
    assert maj_at_k([wrong_first], k=5) == 0.0
    assert maj_at_k([right_first], k=5) == 1.0
    assert maj_at_k([wrong_first, right_first], k=5) == 0.5


def test_maj_at_k_all_none_is_unsolved():
    assert maj_at_k([[(None, False)] * 3, [("7", True)] * 3], k=3) == 0.5


def test_maj_at_k_rejects_too_few_samples():
    with pytest.raises(ValueError, match="only 2 samples"):
        maj_at_k([[("1", True), ("1", True)]], k=3)


def test_mcnemar_table_and_exact_p_value():
    # 5 both right, 8 only A, 2 only B, 3 neither.
    a = [True] * 5 + [True] * 8 + [False] * 2 + [False] * 3
    b = [True] * 5 + [False] * 8 + [True] * 2 + [False] * 3
    result = mcnemar(a, b)
    # p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert result == {"both": 5, "only_a": 8, "only_b": 2, "neither": 3, "p_value": 0.109375}
    assert mcnemar(b, a)["p_value"] == 0.109375


def test_mcnemar_without_discordant_pairs_is_one():
    result = mcnemar([True, False, True], [True, False, True])
    assert result == {"both": 2, "only_a": 0, "only_b": 0, "neither": 1, "p_value": 1.0}


def test_mcnemar_balanced_discordance_caps_at_one():
    # only_a = only_b = 3: 2 * P(X <= 3) for Binomial(6, 1/2) = 2 * 42/64 > 1.
    assert mcnemar([True] * 3 + [False] * 3, [False] * 3 + [True] * 3)["p_value"] == 1.0


def test_mcnemar_rejects_length_mismatch():
    with pytest.raises(ValueError):
        mcnemar([True, False], [True])


def test_paired_bootstrap_identical_scores():
    scores = [0.0, 0.25, 1.0, 0.5, 0.75]
    assert paired_bootstrap(scores, list(scores)) == {"diff": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}


def test_paired_bootstrap_a_better_everywhere():
    b = [0.0, 0.25, 0.5, 0.125, 0.375, 0.0, 0.5, 0.25]
    a = [score + 0.25 + 0.0625 * (i % 3) for i, score in enumerate(b)]
    result = paired_bootstrap(a, b, resamples=500, seed=3)
    assert result["diff"] == pytest.approx(0.25 + 0.0625 * (0 + 1 + 2 + 0 + 1 + 2 + 0 + 1) / 8, rel=1e-12)
    assert 0.25 <= result["ci95"][0] <= result["diff"] <= result["ci95"][1] <= 0.375
    assert result["p_value"] == 0.0


def test_paired_bootstrap_is_deterministic_for_a_seed():
    a = [(7 * i % 11) / 10 for i in range(30)]
    b = [(5 * i % 13) / 12 for i in range(30)]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7)["ci95"] != paired_bootstrap(a, b, seed=8)["ci95"]


def test_paired_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_mean_ci95_of_a_constant_list_is_the_constant():
    result = mean_ci95([0.1] * 7)
    assert result["mean"] == pytest.approx(0.1, rel=1e-15)
    assert result["ci95"] == [result["mean"], result["mean"]]
    assert mean_ci95([0.375] * 7) == {"mean": 0.375, "ci95": [0.375, 0.375]}


def test_mean_ci95_interval_contains_the_mean():
    values = [0.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75]
    result = mean_ci95(values, resamples=1000, seed=1)
    assert result["mean"] == pytest.approx(3.5 / 7, rel=1e-12)
    assert 0.0 <= result["ci95"][0] < result["mean"] < result["ci95"][1] <= 1.0
