"""Letter counting and spelling rewards (1.0 right, 0.0 wrong).

- ``letter_count``: "How many 'r' are in strawberry?" The ``answer`` column is
  the count (an int or its string). The model's final answer is found as in
  `rewards.answers` and may be digits ("3", "3.0") or a word ("three").
- ``spelling``: "Spell strawberry letter by letter." The ``answer`` column is
  the spelled form in any style ("s-t-r-a-w", "S T R A W", "s, t, r"). The
  model's answer is its final-answer phrase (boxed, "The answer is ...",
  "Answer: ...") or else its last non-empty line. It must actually be spelled
  out: split on anything that is not a letter, every piece must be one letter
  ("strawberry" written whole scores 0.0). The letter sequences are compared
  case-insensitively.
"""

from __future__ import annotations

import re

from rewards.answers import (
    as_integer,
    clean_answer,
    extract_final_answer,
    last_answer_phrase,
    last_boxed,
)
from rewards.base import score_against_answer


def score_letter_count(completion: str, gold) -> float:
    """1.0 if the completion's final answer is the gold count."""
    predicted = extract_final_answer(completion)
    if predicted is None:
        return 0.0
    expected = gold if isinstance(gold, int) else as_integer(clean_answer(str(gold)))
    if expected is None:
        raise ValueError(f"letter_count gold answer is not an integer: {gold!r}")
    return 1.0 if as_integer(clean_answer(predicted)) == expected else 0.0


def letter_count_reward(prompts, completions, answer=None, **_columns) -> list[float | None]:
    """Batched letter-count reward; needs the ``answer`` column (the count)."""
    return score_against_answer(score_letter_count, completions, answer)


def spelled_letters(text: str) -> str | None:
    """The letters of a spelled-out word ("S-t-r" -> "str"), or None if not spelled out."""
    pieces = [piece for piece in re.split(r"[^A-Za-z]+", text) if piece]
    if not pieces or any(len(piece) != 1 for piece in pieces):
        return None
    return "".join(pieces).lower()


def _spelling_answer(completion: str) -> str:
    boxed = last_boxed(completion)
    if boxed is not None and boxed.strip():
        return boxed
    phrase = last_answer_phrase(completion, whole_line=True)
    if phrase is not None:
        return phrase
    lines = [line for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def score_spelling(completion: str, gold: str) -> float:
    """1.0 if the completion spells out the same letters as the gold spelling."""
    expected = "".join(re.findall(r"[A-Za-z]", str(gold))).lower()
    predicted = spelled_letters(_spelling_answer(completion))
    return 1.0 if predicted is not None and predicted == expected else 0.0


def spelling_reward(prompts, completions, answer=None, **_columns) -> list[float | None]:
    """Batched spelling reward; needs the ``answer`` column (the spelled form)."""
    return score_against_answer(score_spelling, completions, answer)
