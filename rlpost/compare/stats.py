"""Statistics for comparing model checkpoints evaluated on the same problems.

Pure Python (math, random, fractions); every function takes plain lists, one entry per problem.

- `pass_at_k`, `mean_pass_at_k`, `pass_at_k_curve`: the unbiased pass@k estimator of Chen et al.
  2021, "Evaluating Large Language Models Trained on Code" (arXiv:2107.03374), from n samples per
  problem of which c are correct.
- `maj_at_k`: majority voting over the extracted answers of the first k samples (self-consistency,
  Wang et al. 2022, "Self-Consistency Improves Chain of Thought Reasoning in Language Models").
- `mcnemar`: the paired 2x2 table of two models' per-problem correctness and McNemar's exact test
  (McNemar 1947; the exact form is a two-sided binomial test on the discordant pairs, as
  recommended by Fagerland, Lydersen and Laake 2013, "The McNemar test for binary matched-pairs
  data: mid-p and asymptotic are better than McNemar").
- `paired_bootstrap`, `mean_ci95`: percentile-bootstrap intervals over problems (Efron and
  Tibshirani 1993, "An Introduction to the Bootstrap"); the paired version resamples the same
  problems for both models, so problem difficulty cancels out of the difference.
"""

from __future__ import annotations

import math
import random
from collections import Counter
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


def majority_answer(answers: list[str | None]) -> str | None:
    """The most frequent non-None answer; None when every answer is None.

    Ties go to the tied answer that appears first in `answers`, so the vote is deterministic and
    does not depend on string order or hashing.
    """
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return None
    first_index = {}
    for index, answer in enumerate(answers):
        first_index.setdefault(answer, index)
    return min(counts, key=lambda answer: (-counts[answer], first_index[answer]))


def maj_at_k(samples: list[list[tuple[str | None, bool]]], k: int) -> float:
    """Share of problems solved by majority vote over the first k samples.

    `samples[p]` lists problem p's (extracted answer, correct) pairs in sampling order; None means
    no answer could be extracted and does not vote. The majority answer is chosen by
    `majority_answer` (ties: the answer given earliest wins) and the problem is solved when that
    answer's earliest sample is correct (the same answer is graded the same way). A problem whose
    first k answers are all None is unsolved.
    """
    if not samples:
        raise ValueError("samples is empty")
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}")
    solved = 0
    for problem, problem_samples in enumerate(samples):
        if len(problem_samples) < k:
            raise ValueError(f"k={k} but problem {problem} has only {len(problem_samples)} samples")
        first_k = problem_samples[:k]
        winner = majority_answer([answer for answer, _ in first_k])
        if winner is not None:
            solved += next(correct for answer, correct in first_k if answer == winner)
    return solved / len(samples)


def binomial_cdf_half(successes: int, trials: int) -> Fraction:
    """P(X <= successes) for X ~ Binomial(trials, 1/2), exactly, with integer arithmetic."""
    return Fraction(sum(math.comb(trials, i) for i in range(successes + 1)), 2**trials)


def mcnemar(a_correct: list[bool], b_correct: list[bool]) -> dict:
    """Paired 2x2 table of two models on the same problems and McNemar's exact test.

    Only the discordant problems (one model right, the other wrong) carry evidence. Under the null
    hypothesis that both models are equally good, each discordant problem is equally likely to
    favour either model, so only_a ~ Binomial(only_a + only_b, 1/2); the two-sided p-value is
    min(1, 2 * P(X <= min(only_a, only_b))), and 1.0 when there are no discordant problems.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"a_correct has {len(a_correct)} problems, b_correct {len(b_correct)}")
    if not a_correct:
        raise ValueError("no problems to compare")
    table = Counter(zip(map(bool, a_correct), map(bool, b_correct)))
    only_a, only_b = table[True, False], table[False, True]
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(min(1, 2 * binomial_cdf_half(min(only_a, only_b), discordant)))
    return {
        "both": table[True, True],
        "only_a": only_a,
        "only_b": only_b,
        "neither": table[False, False],
        "p_value": p_value,
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of sorted values, interpolating linearly (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def bootstrap_means(values: list[float], resamples: int, seed: int) -> list[float]:
    """Sorted means of `resamples` resamples of `values` with replacement, deterministic for a seed."""
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
    min(1, 2 * min(share of resampled differences <= 0, share >= 0)).
    """
    if len(a_scores) != len(b_scores):
        raise ValueError(f"a_scores has {len(a_scores)} problems, b_scores {len(b_scores)}")
    if not a_scores:
        raise ValueError("no problems to compare")
    differences = [a - b for a, b in zip(a_scores, b_scores)]
    resampled = bootstrap_means(differences, resamples, seed)
    at_most_zero = sum(d <= 0 for d in resampled) / resamples
    at_least_zero = sum(d >= 0 for d in resampled) / resamples
    return {
        "diff": math.fsum(a_scores) / len(a_scores) - math.fsum(b_scores) / len(b_scores),
        "ci95": [percentile(resampled, 0.025), percentile(resampled, 0.975)],
        "p_value": min(1.0, 2 * min(at_most_zero, at_least_zero)),
    }


def mean_ci95(values: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Mean of per-problem values (e.g. pass@1) with its 95% percentile-bootstrap interval over problems."""
    resampled = bootstrap_means(values, resamples, seed)
    return {
        "mean": math.fsum(values) / len(values),
        "ci95": [percentile(resampled, 0.025), percentile(resampled, 0.975)],
    }
