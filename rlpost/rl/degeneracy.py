"""Signs of degenerate completions, the usual shape of a gamed reward: pure functions the
reward-hacking monitor (rlpost/rl/monitor.py) applies to every RL step.

    distinct_n, repeat_run,             text detectors: repetition and low variety ("the the the")
      compression_ratio, text_metrics
    Canary, canary_texts                degenerate answers scored beside a prompt's samples
    canary_alarms, canary_metrics       the rule that flags a canary, and what is logged of them
    is_finite, mean_of_finite           the NaN-tolerant arithmetic both this module and the monitor use

Words are whitespace-separated, as written (no lower-casing). A canary (a prompt's most frequent
word repeated, the empty answer, the prompt echoed) that scores above the median sample of its
prompt means the reward pays for a degenerate answer.
"""

from __future__ import annotations

import math
import statistics
import zlib
from collections import Counter
from dataclasses import dataclass

CANARY_KINDS = ("repeat", "empty", "echo")
REPEAT_MAX_N = 4  # repeat_run looks at n-grams of 1..4 words


def is_finite(value) -> bool:
    return value is not None and math.isfinite(value)


def mean_of_finite(values) -> float:
    """The mean of the values that are neither None, NaN nor infinite; NaN when none is."""
    given = [v for v in values if is_finite(v)]
    return sum(given) / len(given) if given else math.nan


# ---------------------------------------------------------------------------------------------
# Text detectors


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams of every text together (NaN if none has n words): 1.0 when no
    n-gram occurs twice anywhere in the step."""
    grams = [tuple(words[i : i + n]) for words in map(str.split, texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repeat_run(text: str, max_n: int = REPEAT_MAX_N) -> int:
    """The most back-to-back repeats of any n-gram of 1..max_n words: 'the the the the' → 4,
    'a b a b a b' → 3, no back-to-back repeat → 1, the empty text → 0.

    The n-gram at i repeats k times exactly when words[j] == words[j + n] for the (k - 1)·n
    positions j from i on, so k = 1 + (longest streak of such j) // n: one pass per n."""
    words = text.split()
    longest = 1 if words else 0
    for n in range(1, max_n + 1):
        streak = 0
        for j in range(len(words) - n):
            streak = streak + 1 if words[j] == words[j + n] else 0
            longest = max(longest, 1 + streak // n)
    return longest


def compression_ratio(text: str) -> float:
    """zlib-compressed bytes (level 9) / UTF-8 bytes; NaN for the empty text. Repetitive text
    compresses far below 1; short varied text stays above 1 (zlib adds 6 bytes of framing)."""
    raw = text.encode()
    return len(zlib.compress(raw, 9)) / len(raw) if raw else math.nan


def text_metrics(texts: list[str], num_tokens: list[int], truncated: list[bool]) -> dict:
    """The text detectors over one step's completions; per-sample values are averaged (empty texts
    have no compression ratio and are left out of its mean)."""
    runs = [repeat_run(t) for t in texts]
    return {
        "monitor/distinct_1": distinct_n(texts, 1),
        "monitor/distinct_2": distinct_n(texts, 2),
        "monitor/repeat_run": mean_of_finite(runs),
        "monitor/repeat_run_max": max(runs, default=0),
        "monitor/compression_ratio": mean_of_finite([compression_ratio(t) for t in texts]),
        "monitor/mean_length": mean_of_finite(num_tokens),
        "monitor/truncated_frac": mean_of_finite([float(t) for t in truncated]),
    }


# ---------------------------------------------------------------------------------------------
# Canaries


@dataclass
class Canary:
    """A degenerate completion scored beside the policy's samples of one prompt."""

    prompt: int  # index of that prompt in the step (its samples are prompt·n .. prompt·n + n - 1)
    kind: str  # one of CANARY_KINDS
    text: str
    reward: float = math.nan  # the proxy reward the reward workers gave it (NaN: none)


def canary_texts(prompt: str, completions: list[str]) -> dict[str, str]:
    """A prompt's canaries: the most frequent word of its samples (the first seen on a tie; 'the'
    if they have none) repeated as many times as they have words on average, at least 8; the
    empty answer; the prompt itself."""
    words = [w for c in completions for w in c.split()]
    word = Counter(words).most_common(1)[0][0] if words else "the"
    count = max(8, round(len(words) / max(len(completions), 1)))
    return {"repeat": " ".join([word] * count), "empty": "", "echo": prompt}


def _sample_median(rewards: list[float], prompt: int, group_size: int) -> float:
    """The median proxy reward of one prompt's samples that have one; NaN when none has."""
    group = [r for r in rewards[prompt * group_size : (prompt + 1) * group_size] if is_finite(r)]
    return statistics.median(group) if group else math.nan


def canary_alarms(canaries: list[Canary], rewards: list[float], group_size: int) -> list[tuple[Canary, float]]:
    """The canaries whose reward is strictly above the median proxy reward of their prompt's
    samples, each with that median (samples and canaries without a reward are left out)."""
    fired = []
    for canary in canaries:
        median = _sample_median(rewards, canary.prompt, group_size)
        if is_finite(median) and is_finite(canary.reward) and canary.reward > median:
            fired.append((canary, median))
    return fired


def canary_metrics(canaries: list[Canary], rewards: list[float], group_size: int) -> dict:
    """Mean reward of each canary kind, and the mean over the same prompts of their samples' median."""
    metrics = {
        f"monitor/canary/{kind}": mean_of_finite([c.reward for c in canaries if c.kind == kind])
        for kind in CANARY_KINDS
    }
    prompts = sorted({c.prompt for c in canaries})
    metrics["monitor/canary/policy_median"] = mean_of_finite(
        [_sample_median(rewards, prompt, group_size) for prompt in prompts]
    )
    return metrics
