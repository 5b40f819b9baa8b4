"""Statistics for comparing model checkpoints evaluated on the same problems.

Pure Python (math, random, fractions); every function takes plain lists, one entry per problem.

- `pass_at_k`, `mean_pass_at_k`, `pass_at_k_curve`: the unbiased pass@k estimator of Chen et al.
  2021, "Evaluating Large Language Models Trained on Code" (arXiv:2107.03374), from n samples per
  problem of which c are correct.
- `maj_at_k`: majority voting over the extracted answers of k samples (self-consistency, Wang et
  al. 2022, "Self-Consistency Improves Chain of Thought Reasoning in Language Models"), as the
  exact expectation over every k-subset of the n samples, like pass@k.
- `mcnemar`: the paired 2x2 table of two models' per-problem correctness, McNemar's exact test
  (McNemar 1947; a two-sided binomial test on the discordant pairs) and its mid-p value, which
  Fagerland, Lydersen and Laake 2013, "The McNemar test for binary matched-pairs data: mid-p and
  asymptotic are better than McNemar", recommend: the exact test is conservative.
- `paired_bootstrap`, `mean_ci95`, `bootstrap_means`, `percentile`: percentile-bootstrap
  intervals over problems (Efron and Tibshirani 1993, "An Introduction to the Bootstrap"); the
  paired version resamples the same problems for both models, so problem difficulty cancels out
  of the difference. rlpost/rlhf/ranking_metrics.py uses the same bootstrap over prompts.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct.

    The unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et al. 2021, computed as
    1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids the huge binomial coefficients.
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..n, got k={k} with n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in 0..n, got c={c} with n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct_counts: list[int], n: int, k: int) -> float:
    """pass@k averaged over problems; `correct_counts[p]` is how many of problem p's n samples are correct."""
    if not correct_counts:
        raise ValueError("correct_counts is empty")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)


def pass_at_k_curve(correct_counts: list[int], n: int) -> dict[int, float]:
    """Mean pass@k for k = 1, 2, 4, ... up to n, plus k = n when n is not a power of 2."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got n={n}")
    ks = [2**e for e in range(n.bit_length()) if 2**e <= n]
    if ks[-1] != n:
        ks.append(n)
    return {k: mean_pass_at_k(correct_counts, n, k) for k in ks}


def _other_answers_ways(other_counts: list[int], none_count: int, votes: int, size: int) -> dict[int, int]:
    """Ways to draw `size` more samples so that no other answer gets more than `votes` votes.

    `other_counts` are the sample counts of the other (non-None) answers; the `none_count`
    samples without an answer are free to be drawn. Returns {ties: ways}, where ties is how many
    other answers get exactly `votes` votes. A polynomial product (one factor per answer, a count
    per (drawn, ties)) instead of enumerating subsets, which would be C(n, k): 12,870 per problem
    for n = 16, k = 8.
    """
    ways = {(0, 0): 1}
    for count, capped in [(none_count, False)] + [(c, True) for c in other_counts]:
        grown: dict[tuple[int, int], int] = {}
        for (drawn, ties), number in ways.items():
            for j in range(min(count, votes if capped else size, size - drawn) + 1):
                key = (drawn + j, ties + (capped and j == votes))
                grown[key] = grown.get(key, 0) + number * math.comb(count, j)
        ways = grown
    return {ties: number for (drawn, ties), number in ways.items() if drawn == size}


def problem_maj_at_k(samples: list[tuple[str | None, bool]], k: int) -> Fraction:
    """One problem's maj@k: the chance that a majority vote over k of its n samples is correct.

    The expectation over all C(n, k) subsets of k samples, computed exactly. In a subset the
    answer with the most votes wins; None (no extracted answer) does not vote, and a subset of
    only None is unsolved. A tie between t answers is broken uniformly at random, so each tied
    answer wins 1/t of the subset: the value does not depend on the order of the samples. An
    answer is graded as its first sample is (the same answer is graded the same way).
    """
    if not 1 <= k <= len(samples):
        raise ValueError(f"k={k} but the problem has {len(samples)} samples")
    none_count = sum(answer is None for answer, _ in samples)
    counts = Counter(answer for answer, _ in samples if answer is not None)
    graded: dict[str, bool] = {}
    for answer, correct in samples:
        if answer is not None:
            graded.setdefault(answer, bool(correct))
    won = Fraction(0)  # subsets the correct answers win, a tied subset counting 1/t
    for answer, count in counts.items():
        if not graded[answer]:
            continue
        others = [c for other, c in counts.items() if other != answer]
        for votes in range(1, min(k, count) + 1):
            ties = _other_answers_ways(others, none_count, votes, k - votes)
            won += math.comb(count, votes) * sum(Fraction(ways, tied + 1) for tied, ways in ties.items())
    return won / math.comb(len(samples), k)


def maj_at_k(samples: list[list[tuple[str | None, bool]]], k: int) -> float:
    """Mean over problems of `problem_maj_at_k`: majority voting over k of the n samples.

    `samples[p]` lists problem p's (extracted answer, correct) pairs. Every k-subset of a
    problem's samples counts: a vote over the first k samples only would make maj@2 equal maj@1
    (a 1-1 tie going to the first sample). maj@1 is the share of samples that have an answer and
    are correct.
    """
    if not samples:
        raise ValueError("samples is empty")
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}")
    for problem, problem_samples in enumerate(samples):
        if len(problem_samples) < k:
            raise ValueError(f"k={k} but problem {problem} has only {len(problem_samples)} samples")
    return float(sum(problem_maj_at_k(problem_samples, k) for problem_samples in samples) / len(samples))


def binomial_cdf_half(successes: int, trials: int) -> Fraction:
    """P(X <= successes) for X ~ Binomial(trials, 1/2), exactly, with integer arithmetic."""
    return Fraction(sum(math.comb(trials, i) for i in range(successes + 1)), 2**trials)


def mcnemar(a_correct: list[bool], b_correct: list[bool]) -> dict:
    """Paired 2x2 table of two models on the same problems, McNemar's exact p-value and its mid-p.

    Only the discordant problems (one model right, the other wrong) carry evidence. Under the null
    hypothesis that both models are equally good, each discordant problem is equally likely to
    favour either model, so only_a ~ Binomial(only_a + only_b, 1/2). With m = min(only_a, only_b)
    the two-sided exact p-value is min(1, 2 * P(X <= m)) and the mid-p value counts the observed
    table half: 2 * (P(X <= m) - P(X = m) / 2) (Fagerland et al. 2013), which is 1 when
    only_a = only_b. Both are 1.0 when there are no discordant problems.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"a_correct has {len(a_correct)} problems, b_correct {len(b_correct)}")
    if not a_correct:
        raise ValueError("no problems to compare")
    table = Counter(zip(map(bool, a_correct), map(bool, b_correct)))
    only_a, only_b = table[True, False], table[False, True]
    discordant, fewer = only_a + only_b, min(only_a, only_b)
    at_most_fewer = binomial_cdf_half(fewer, discordant)
    at_fewer = Fraction(math.comb(discordant, fewer), 2**discordant)
    return {
        "both": table[True, True],
        "only_a": only_a,
        "only_b": only_b,
        "neither": table[False, False],
        "p_value": 1.0 if discordant == 0 else float(min(1, 2 * at_most_fewer)),
        "mid_p": 1.0 if discordant == 0 else float(min(1, 2 * at_most_fewer - at_fewer)),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of sorted values, interpolating linearly (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def bootstrap_means(values: Sequence[float], resamples: int, seed: int) -> list[float]:
    """Sorted means of `resamples` resamples of `values` with replacement, deterministic for a seed.

    Means are summed with math.fsum (correctly rounded), so resampling a constant list gives that
    constant back exactly.
    """
    if not values:
        raise ValueError("no values to bootstrap")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got resamples={resamples}")
    generator = random.Random(seed)
    n = len(values)
    return sorted(math.fsum(generator.choices(values, k=n)) / n for _ in range(resamples))


def paired_bootstrap(a_scores: list[float], b_scores: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Difference of two models' mean per-problem scores, with a paired bootstrap interval and p-value.

    `a_scores[p]` and `b_scores[p]` score the same problem p (e.g. its pass@1, the mean correctness
    over its samples). Resampling problems with the same indices for both models is resampling
    the per-problem differences a - b. Returns the observed difference, the 95% percentile
    interval of the resampled differences and the two-sided p-value
    min(1, 2 * (min(resamples with difference <= 0, resamples with difference >= 0) + 1) / (resamples + 1)).
    The + 1s count the observed data as one of the resamples, so the p-value is never 0, which
    no finite number of resamples can show (Phipson and Smyth 2010, "Permutation P-values should
    never be zero"): its floor is 2 / (resamples + 1).
    """
    if len(a_scores) != len(b_scores):
        raise ValueError(f"a_scores has {len(a_scores)} problems, b_scores {len(b_scores)}")
    if not a_scores:
        raise ValueError("no problems to compare")
    differences = [a - b for a, b in zip(a_scores, b_scores)]
    resampled = bootstrap_means(differences, resamples, seed)
    at_most_zero = sum(d <= 0 for d in resampled)
    at_least_zero = sum(d >= 0 for d in resampled)
    return {
        "diff": math.fsum(a_scores) / len(a_scores) - math.fsum(b_scores) / len(b_scores),
        "ci95": [percentile(resampled, 0.025), percentile(resampled, 0.975)],
        "p_value": min(1.0, 2 * (min(at_most_zero, at_least_zero) + 1) / (resamples + 1)),
    }


def mean_ci95(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Mean of per-problem values (e.g. pass@1) with its 95% percentile-bootstrap interval over problems."""
    resampled = bootstrap_means(values, resamples, seed)
    return {
        "mean": math.fsum(values) / len(values),
        "ci95": [percentile(resampled, 0.025), percentile(resampled, 0.975)],
    }
