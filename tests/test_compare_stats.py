"""pass@k, maj@k, McNemar's exact test and the bootstraps against hand-computed or brute-force values."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import pytest

from rlpost.compare.stats import (
    bootstrap_means,
    maj_at_k,
    mcnemar,
    mean_ci95,
    mean_pass_at_k,
    paired_bootstrap,
    pass_at_k,
    pass_at_k_curve,
    problem_maj_at_k,
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


def brute_force_maj_at_k(samples: list[tuple[str | None, bool]], k: int) -> Fraction:
    """Share of the k-subsets won by a correct answer, a t-way tie counting 1/t for each tied answer."""
    grade = {}
    for answer, correct in samples:
        grade.setdefault(answer, correct)
    subsets = list(itertools.combinations(samples, k))
    won = Fraction(0)
    for subset in subsets:
        votes = Counter(answer for answer, _ in subset if answer is not None)
        if votes:
            winners = [answer for answer, count in votes.items() if count == max(votes.values())]
            won += Fraction(sum(grade[answer] for answer in winners), len(winners))
    return won / len(subsets)


A, B, C = ("a", True), ("b", False), ("c", False)


def test_maj_at_k_by_hand_one_right_two_wrong():
    samples = [A, B, B]
    assert problem_maj_at_k(samples, 1) == Fraction(1, 3)
    # {a, b}, {a, b}: a 1-1 tie, each answer wins half; {b, b}: b wins. (1/2 + 1/2 + 0) / 3
    assert problem_maj_at_k(samples, 2) == Fraction(1, 3)
    assert problem_maj_at_k(samples, 3) == 0


def test_maj_at_k_by_hand_two_right_three_wrong():
    samples = [A, A, B, B, C]
    assert problem_maj_at_k(samples, 1) == Fraction(2, 5)
    # 10 pairs: {a, a} 1 wins; 4 x {a, b} and 2 x {a, c} half each; {b, b}, 2 x {b, c} lost: 4 / 10
    assert problem_maj_at_k(samples, 2) == Fraction(4, 10)
    # votes (a, b, c) with their subset counts: (2,1,0) x2 and (2,0,1) x1 won, (1,1,1) x4 a third
    # each, (1,2,0) x2 and (0,2,1) x1 lost: (2 + 1 + 4/3) / 10
    assert problem_maj_at_k(samples, 3) == Fraction(13, 30)
    # leave one out: without an a, b wins (x2); without a b, a wins (x2); without c, a 2-2 tie
    assert problem_maj_at_k(samples, 4) == Fraction(5, 2) / 5
    assert problem_maj_at_k(samples, 5) == Fraction(1, 2)


def test_maj_at_k_no_answer_does_not_vote():
    samples = [A, (None, False), B]
    assert problem_maj_at_k(samples, 1) == Fraction(1, 3)  # a subset of only None is unsolved
    # {a, None}: a alone wins; {a, b}: tie; {None, b}: b wins. (1 + 1/2 + 0) / 3
    assert problem_maj_at_k(samples, 2) == Fraction(1, 2)
    assert problem_maj_at_k(samples, 3) == Fraction(1, 2)
    assert maj_at_k([[(None, False)] * 3, [("7", True)] * 3], k=3) == 0.5
    assert maj_at_k([[(None, False)] * 3, [("7", True)] * 3], k=1) == 0.5


def test_maj_at_k_votes_over_every_subset_not_the_first_k():
    # Over the first 2 samples only, the 1-1 tie of b and a would make maj@2 = maj@1 = 0.
    samples = [B, A, A]
    # {b, a} twice: half each; {a, a}: won. (1/2 + 1/2 + 1) / 3
    assert maj_at_k([samples], k=2) == pytest.approx(2 / 3, rel=1e-15)
    assert maj_at_k([samples], k=1) == pytest.approx(2 / 3, rel=1e-15)
    assert maj_at_k([samples, [A, B, B]], k=2) == pytest.approx((2 / 3 + 1 / 3) / 2, rel=1e-15)


def test_maj_at_k_does_not_depend_on_sample_order():
    wrong_first = [(None, False), ("5", False), ("4", True), ("4", True), ("5", False)]
    right_first = [("4", True), ("5", False), ("5", False), ("4", True), (None, False)]
    for k in range(1, 6):
        assert problem_maj_at_k(wrong_first, k) == problem_maj_at_k(right_first, k)
    assert maj_at_k([wrong_first, right_first], k=5) == 0.5  # "4" and "5" tie 2-2


def test_maj_at_k_grades_an_answer_by_its_first_sample():
    assert problem_maj_at_k([("4", True), ("4", False)], 1) == 1
    assert problem_maj_at_k([("4", False), ("4", True)], 1) == 0


def test_maj_at_k_equals_brute_force_enumeration():
    generator = random.Random(0)
    for _ in range(40):
        n = generator.randint(1, 8)
        spread = generator.randint(0, 4)
        samples = []
        for _ in range(n):
            answer = generator.choice([None, *map(str, range(spread + 1))])
            samples.append((answer, answer in ("0", "1")))  # sometimes two different right answers
        for k in range(1, n + 1):
            assert problem_maj_at_k(samples, k) == brute_force_maj_at_k(samples, k), (samples, k)


def test_maj_at_k_rejects_bad_k():
    with pytest.raises(ValueError, match="only 2 samples"):
        maj_at_k([[("1", True), ("1", True)]], k=3)
    with pytest.raises(ValueError, match="k must be at least 1"):
        maj_at_k([[("1", True)]], k=0)


def test_mcnemar_table_and_exact_p_value():
    # 5 both right, 8 only A, 2 only B, 3 neither.
    a = [True] * 5 + [True] * 8 + [False] * 2 + [False] * 3
    b = [True] * 5 + [False] * 8 + [True] * 2 + [False] * 3
    result = mcnemar(a, b)
    # p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    # mid-p = p - C(10,2) / 2^10 = (112 - 45) / 1024
    assert result == {"both": 5, "only_a": 8, "only_b": 2, "neither": 3, "p_value": 0.109375, "mid_p": 67 / 1024}
    assert mcnemar(b, a)["p_value"] == 0.109375
    assert mcnemar(b, a)["mid_p"] == 0.0654296875


def test_mcnemar_mid_p_by_hand():
    # 5 only A, 0 only B: p = 2 * 1/32, mid-p = 2 * (1/32 - 1/64) = 1/32
    five_to_none = mcnemar([True] * 5, [False] * 5)
    assert (five_to_none["p_value"], five_to_none["mid_p"]) == (0.0625, 0.03125)
    # 1 only A: p = min(1, 2 * 1/2) = 1, mid-p = 2 * (1/2 - 1/4) = 1/2
    one = mcnemar([True, True], [False, True])
    assert (one["p_value"], one["mid_p"]) == (1.0, 0.5)


def test_mcnemar_without_discordant_pairs_is_one():
    result = mcnemar([True, False, True], [True, False, True])
    assert result == {"both": 2, "only_a": 0, "only_b": 0, "neither": 1, "p_value": 1.0, "mid_p": 1.0}


def test_mcnemar_balanced_discordance_caps_at_one():
    # only_a = only_b = 3: 2 * P(X <= 3) for Binomial(6, 1/2) = 2 * 42/64 > 1.
    result = mcnemar([True] * 3 + [False] * 3, [False] * 3 + [True] * 3)
    assert result["p_value"] == 1.0
    assert result["mid_p"] == 1.0  # 2 * (42/64 - 20/128): exactly 1, no cap needed


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
    # No resampled difference is <= 0, yet the p-value is not 0: 2 * (0 + 1) / (500 + 1).
    assert result["p_value"] == 2 / 501


def test_paired_bootstrap_p_value_counts_the_data_as_a_resample():
    # One problem that a wins: every resampled difference is +1, none is <= 0.
    # p = min(1, 2 * (0 + 1) / (resamples + 1)): its floor, never 0.
    assert paired_bootstrap([1.0], [0.0], resamples=3)["p_value"] == 0.5
    assert paired_bootstrap([1.0], [0.0], resamples=1)["p_value"] == 1.0
    assert paired_bootstrap([0.0], [1.0], resamples=999)["p_value"] == 0.002
    # Every resampled difference is 0, so both tails count all of them: 2 * 1000 / 1000, capped.
    assert paired_bootstrap([0.5, 0.25], [0.5, 0.25], resamples=999)["p_value"] == 1.0


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


def test_bootstrap_means_rejects_bad_input():
    with pytest.raises(ValueError, match="resamples must be at least 1"):
        bootstrap_means([0.5], resamples=0, seed=0)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_means([], resamples=10, seed=0)


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
