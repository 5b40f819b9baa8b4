"""Format reward: the answer phrase is there and thinking tags are well formed.

Two checks per completion:

- answer phrase: the completion contains the expected answer phrase followed by
  something ("The answer is 42"); the pattern is the `answer_pattern` keyword;
- thinking tags: ``<think>`` / ``</think>`` are balanced and never nested (a
  completion without tags passes; with ``require_think=True`` it must contain
  exactly one closed thinking block).

Scoring: 1.0 if both checks pass, else 0.0. With ``partial=True`` each check is
worth 0.5, which gives a gradient to a model that gets one of them right.
"""

from __future__ import annotations

import re

from rewards.base import completion_text

DEFAULT_ANSWER_PATTERN = r"(?i)\bthe\s+(?:final\s+)?answer\s+is\b\s*:?\s*\S"
_THINK_TAG = re.compile(r"<(/?)think>", re.IGNORECASE)


def thinking_tags_well_formed(text: str, require_think: bool = False) -> bool:
    """Whether ``<think>`` tags open and close in turn, never nested or left open."""
    depth = 0
    blocks = 0
    for tag in _THINK_TAG.finditer(text):
        if tag.group(1):  # closing tag
            if depth == 0:
                return False
            depth -= 1
            blocks += 1
        else:
            if depth == 1:
                return False
            depth += 1
    if depth != 0:
        return False
    return blocks == 1 if require_think else True


def has_answer_phrase(text: str, answer_pattern: str = DEFAULT_ANSWER_PATTERN) -> bool:
    """Whether the answer phrase appears (after any thinking block)."""
    # An answer stated only inside the thinking block does not count.
    visible = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
    return re.search(answer_pattern, visible) is not None


def format_reward(
    prompts,
    completions,
    *,
    answer_pattern: str = DEFAULT_ANSWER_PATTERN,
    require_think: bool = False,
    partial: bool = False,
    **_columns,
) -> list[float]:
    """Batched format reward (see module docstring)."""
    scores: list[float] = []
    for completion in completions:
        text = completion_text(completion)
        checks = (
            has_answer_phrase(text, answer_pattern),
            thinking_tags_well_formed(text, require_think),
        )
        if partial:
            scores.append(0.5 * sum(checks))
        else:
            scores.append(1.0 if all(checks) else 0.0)
    return scores
