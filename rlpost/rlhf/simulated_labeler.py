"""A SIMULATED labeler: a scripted stand-in for a person ranking answers to arithmetic word problems.

No person is involved. Tests and benches need rankings with a known ground truth (and a person
cannot sit in CI), so this module ranks K responses to one problem of `rlpost.tasks.arithmetic`
by a fixed hidden preference. Its records carry the labeler name "simulated:arithmetic_preference"
so they are never mistaken for human labels.

The hidden preference orders responses lexicographically by four keys, best first:

  (a) correct final answer before wrong: the project's math reward (`rewards.math.score_math`)
      on the gold `answer`;
  (b) fewer false arithmetic steps: a step is a match of `rlpost.tasks.STEP` ("a op b = c",
      whole numbers, one operation); it is false when a op b != c (division by 0 is false).
      Each match is judged on its own, as the task's worked solutions write one operation per
      step;
  (c) a unit stated in the final answer, see `states_unit`;
  (d) shorter (fewer characters).

Responses equal on all four keys are tied. Keys (b)–(d) are what the math reward alone does not
see: two correct answers score the same, and a reward model trained on these rankings has to
learn that sound working, a unit and brevity matter too.
"""

from __future__ import annotations

import re
from fractions import Fraction

from rewards.answers import last_answer_phrase
from rewards.base import completion_text
from rewards.math import score_math
from rlpost.tasks import STEP

NAME = "arithmetic_preference"
LABELER = f"simulated:{NAME}"

# A count in the prompt and the word after it: "3 apples", "4 boxes", "5 years". A number written
# as money ("$3 each") is not a count, so the word after it ("each") is not a unit.
_COUNT_THEN_WORD = re.compile(r"(?<![\d$.,])\d+\s+([A-Za-z]+)")
_NUMBER_THEN_WORD = re.compile(r"\d\s+([A-Za-z]+)")
_MONEY_AMOUNT = re.compile(r"\$\s*\d")


def _prompt_text(prompt) -> str:
    """The problem's text: the prompt string, or the last user message of a chat prompt."""
    if isinstance(prompt, str):
        return prompt
    users = [message["content"] for message in prompt if message.get("role") == "user"]
    if not users:
        raise ValueError("a chat prompt needs a user message")
    return users[-1]


def unit_words(prompt) -> frozenset[str]:
    """The words the problem itself uses as units, lower-case.

    Every word that follows a count in the prompt ("buys 3 apples" → "apples", "is 5 years old"
    → "years"), and "dollar"/"dollars" when the prompt contains "$".
    """
    text = _prompt_text(prompt)
    words = {word.lower() for word in _COUNT_THEN_WORD.findall(text)}
    if "$" in text:
        words |= {"dollar", "dollars"}
    return frozenset(words)


def states_unit(prompt, response: str) -> bool:
    """Whether the response's final answer carries a unit taken from the problem.

    The final answer is the X of the response's last "The answer is X" / "Answer: X" (to the
    end of its sentence, `rewards.answers.last_answer_phrase`); a response without one states no
    unit. X states a unit when a number in it is directly followed by one of `unit_words(prompt)`
    (or its singular without a final "s"/"es": "1 apple", "1 box"), or, when the prompt contains
    "$", when it has a "$" in front of a number ("$12").
    """
    answer = last_answer_phrase(response)
    if answer is None:
        return False
    if "$" in _prompt_text(prompt) and _MONEY_AMOUNT.search(answer):
        return True
    units = unit_words(prompt)
    for word in _NUMBER_THEN_WORD.findall(answer):
        word = word.lower()
        if word in units or f"{word}s" in units or f"{word}es" in units:
            return True
    return False


def false_steps(response: str) -> int:
    """How many "a op b = c" steps of the response have a wrong result."""
    count = 0
    for left, op, right, result in STEP.findall(response):
        a, b, c = int(left), int(right), int(result)
        if op == "+":
            value = a + b
        elif op == "-":
            value = a - b
        elif op == "*":
            value = a * b
        else:
            value = Fraction(a, b) if b else None
        count += value != c
    return count


def preference_key(prompt, response: str, answer: str) -> tuple[int, int, int, int]:
    """The hidden preference as a sort key: smaller is better, equal keys are tied.

    (wrong answer 0/1, false steps, no unit 0/1, characters).
    """
    correct = score_math(response, answer) == 1.0
    return (int(not correct), false_steps(response), int(not states_unit(prompt, response)), len(response))


def rank_responses(prompt, responses: list[str], answer: str) -> list[int]:
    """The tier of each response under the hidden preference: 0 = best, equal keys share a tier."""
    keys = [preference_key(prompt, response, answer) for response in responses]
    tier_of_key = {key: tier for tier, key in enumerate(sorted(set(keys)))}
    return [tier_of_key[key] for key in keys]


def label(prompt, responses: list[str], answer: str) -> dict:
    """The rankings record (one JSONL line) for these responses, labelled `LABELER`.

    `order` lists the tiers best → worst: a lone response as its index, tied responses as a list
    of indices in increasing order.
    """
    if len(responses) < 2 or not all(isinstance(r, str) and r for r in responses):
        raise ValueError("a ranking needs at least 2 non-empty responses")
    ranks = rank_responses(prompt, responses, answer)
    order: list[int | list[int]] = []
    for tier in range(max(ranks) + 1):
        members = [index for index, rank in enumerate(ranks) if rank == tier]
        order.append(members[0] if len(members) == 1 else members)
    return {"prompt": prompt, "responses": list(responses), "order": order, "labeler": LABELER}


def hidden_score(prompt, response: str, answer: str) -> float:
    """A scalar summary of the hidden preference, for plots over training steps (rankings and win
    rates use the exact order): 1 for a correct answer, -0.3 per false step (at most 2), +0.1 for
    a stated unit, -0.0005 per character (at most 100). It keeps the preference's order for
    responses with at most 2 false steps and 100 characters."""
    wrong, false, no_unit, chars = preference_key(prompt, response, answer)
    return (1 - wrong) - 0.3 * min(false, 2) + 0.1 * (1 - no_unit) - 0.0005 * min(chars, 100)


def hidden_preference_reward(prompts, completions, *, answer, **_columns) -> list[float]:
    """`hidden_score` as a reward function ("rlpost.rlhf.simulated_labeler:hidden_preference_reward"):
    run at weight 0 it logs the hidden preference every step (reward/...) without training on it."""
    return [hidden_score(p, completion_text(c), a) for p, c, a in zip(prompts, completions, answer)]


def hidden_win_rate(prompts, answers, responses_a, responses_b, seed: int = 0, resamples: int = 1000) -> dict:
    """How often A's response beats B's to the same prompt under the hidden preference (a tie
    counts half), with a percentile bootstrap 95 % interval over prompts."""
    import random

    outcomes = []
    for prompt, answer, a, b in zip(prompts, answers, responses_a, responses_b, strict=True):
        key_a, key_b = preference_key(prompt, a, answer), preference_key(prompt, b, answer)
        outcomes.append(1.0 if key_a < key_b else 0.5 if key_a == key_b else 0.0)
    rng = random.Random(seed)
    n = len(outcomes)
    means = sorted(sum(rng.choices(outcomes, k=n)) / n for _ in range(resamples))
    return {
        "mean": sum(outcomes) / n,
        "ci95": [means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]],
        "wins": outcomes.count(1.0),
        "ties": outcomes.count(0.5),
        "losses": outcomes.count(0.0),
    }
