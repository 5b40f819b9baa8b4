"""A SIMULATED labeler: a scripted stand-in for a person grading answers to arithmetic word problems.

No person is involved. Tests and benches need rankings with a known ground truth (and a person
cannot sit in CI), so this module ranks K responses to one problem of `rlpost.tasks.arithmetic`
by a fixed hidden preference. Its records carry the labeler name "simulated:arithmetic_grader"
so they are never mistaken for human labels.

The hidden preference grades the way a teacher marks homework. It orders responses
lexicographically by six keys, best first:

  (a) a correct final answer before a wrong one: the project's math reward
      (`rewards.math.score_math`) on the gold `answer`. An echo of the prompt is never correct:
      it only repeats the problem's numbers.
  (b) sound text before degenerate text (`degeneracy`): the empty answer; a word or n-gram of up
      to 16 words repeated 4 or more times back to back ("the the the the"); an echo of the
      prompt (nothing but the problem's own text); a malformed number ("2..5", "3.4.5").
  (c) work shown before none: at least one good step (below).
  (d) fewer bad steps.
  (e) a unit stated in the final answer, see `states_unit`.
  (f) shorter (fewer characters).

A step is a match of `rlpost.tasks.STEP` ("a op b = c", whole numbers, one operation). It is
true when a op b == c exactly (division by 0 is false), and relevant when a and b each are a
number of the problem (written in digits, "$38" → 38, or as a word: "twice" → 2, "three" → 3,
see `problem_numbers`) or the result c of an earlier relevant step of the same response. A slip
carried forward is still work on the problem; a chain started from numbers the problem never
mentions ("1 + 1 = 2. 2 + 2 = 4." as padding) is not. A good step is true and relevant; a bad
step is false or irrelevant.

Why this order: correctness comes first, and then a wrong answer earns its place by honest work,
so giving up never pays. A bare or garbled wrong answer has no false step; a preference that
ranked "fewer false steps" before any credit for work ranked it above a worked answer with one
slip, and RL against a reward model fitted to that learned to drop its working. Here a bare
wrong number loses to the worked slip on (c), "The books cost 2..5." and "the the the …" lose on
(b), and padding with true but unrelated steps loses on (d) or, when the problem happens to
contain its numbers, on (f). Keys (e) and (f) only break ties. Responses equal on all six keys
are tied.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

from rewards.answers import last_answer_phrase
from rewards.base import completion_text
from rewards.math import score_math
from rlpost.tasks import STEP

NAME = "arithmetic_grader"
LABELER = f"simulated:{NAME}"

# A count in the prompt and the word after it: "3 apples", "4 boxes", "5 years". A number written
# as money ("$3 each") is not a count, so the word after it ("each") is not a unit.
_COUNT_THEN_WORD = re.compile(r"(?<![\d$.,])\d+\s+([A-Za-z]+)")
_NUMBER_THEN_WORD = re.compile(r"\d\s+([A-Za-z]+)")
_MONEY_AMOUNT = re.compile(r"\$\s*\d")
_DIGITS = re.compile(r"\d+")
NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "twice": 2,
    "double": 2,
    "half": 2,
    "thrice": 3,
    "triple": 3,
}
_NUMBER_WORD = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)
# "2..5" and "3.4.5": no way of writing a number has two points in a row or two decimal points.
_MALFORMED_NUMBER = re.compile(r"\d\.{2,}\d|\d\.\d+\.\d")
REPEAT_MAX_WORDS = 16  # the longest n-gram whose back-to-back repeats count as degenerate
REPEAT_MIN_TIMES = 4  # "very very" and "1 + 1 + 1" are honest; four in a row is not
_EDGE_PUNCTUATION = ".,;:!?\"'()"


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


def problem_numbers(prompt) -> frozenset[int]:
    """The numbers the problem states: every run of digits, and the number words of `NUMBER_WORDS`."""
    text = _prompt_text(prompt)
    numbers = {int(digits) for digits in _DIGITS.findall(text)}
    numbers |= {NUMBER_WORDS[word.lower()] for word in _NUMBER_WORD.findall(text)}
    return frozenset(numbers)


def _is_true(a: int, op: str, b: int, c: int) -> bool:
    if op == "+":
        return a + b == c
    if op == "-":
        return a - b == c
    if op == "*":
        return a * b == c
    return b != 0 and Fraction(a, b) == c


def step_counts(prompt, response: str) -> tuple[int, int]:
    """(good steps, bad steps) of the response, in the module docstring's sense."""
    known = set(problem_numbers(prompt))
    good = bad = 0
    for left, op, right, result in STEP.findall(response):
        a, b, c = int(left), int(right), int(result)
        relevant = a in known and b in known
        if relevant:
            known.add(c)
        if relevant and _is_true(a, op, b, c):
            good += 1
        else:
            bad += 1
    return good, bad


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def is_echo(prompt, response: str) -> bool:
    """Whether the response says nothing but the problem's own text: the prompt once or more with
    nothing else that has a letter or digit, or a piece of the prompt of 3 or more words."""
    problem, text = _normalised(_prompt_text(prompt)), _normalised(response)
    if not text or not problem:
        return False
    if problem in text:
        return not re.search(r"[^\W_]", text.replace(problem, ""))
    return len(text.split()) >= 3 and text in problem


def longest_repeat(response: str, max_words: int = REPEAT_MAX_WORDS) -> int:
    """The most back-to-back repeats of any n-gram of 1..max_words words (case and edge punctuation
    ignored): "The the the the." → 4, "a b a b a b" → 3, no repeat → 1, no words → 0.

    Written here rather than shared with the reward-hacking monitor on purpose: the hidden
    preference judges RL results, and a bug in a detector both used would hide from both."""
    words = [word.strip(_EDGE_PUNCTUATION) for word in response.lower().split()]
    longest = 1 if words else 0
    for n in range(1, max_words + 1):
        # the n-gram at i repeats k times when words[j] == words[j + n] for (k - 1)·n j's in a row
        streak = 0
        for j in range(len(words) - n):
            streak = streak + 1 if words[j] == words[j + n] else 0
            longest = max(longest, 1 + streak // n)
    return longest


def degeneracy(prompt, response: str) -> str | None:
    """Why the response is degenerate text ("empty", "repetition", "echo", "malformed number"),
    or None when it is not."""
    if not response.strip():
        return "empty"
    if is_echo(prompt, response):
        return "echo"
    if _MALFORMED_NUMBER.search(response):
        return "malformed number"
    if longest_repeat(response) >= REPEAT_MIN_TIMES:
        return "repetition"
    return None


def preference_key(prompt, response: str, answer: str) -> tuple[int, int, int, int, int, int]:
    """The hidden preference as a sort key: smaller is better, equal keys are tied.

    (wrong answer 0/1, degenerate 0/1, no work shown 0/1, bad steps, no unit 0/1, characters).
    """
    correct = not is_echo(prompt, response) and score_math(response, answer) == 1.0
    good, bad = step_counts(prompt, response)
    return (
        int(not correct),
        int(degeneracy(prompt, response) is not None),
        int(good == 0),
        bad,
        int(not states_unit(prompt, response)),
        len(response),
    )


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
    """The hidden preference as one number in (0, 1], strictly in its order: a response ranked
    above another scores higher, tied responses score the same (up to float rounding).

        score = (4·correct + 2·sound + worked + 1 / (1 + penalty)) / 8
        penalty = bad steps + (no unit + characters / (characters + 1)) / 2

    with correct, sound (not degenerate) and worked (a good step) each 0 or 1. Every term is
    worth more than all the terms after it together can add, so the scale reads: above 0.5 a
    correct answer, above 0.75 a correct sound one; a wrong answer with honest work lies in
    (0.375, 0.5], a wrong bare one in (0.25, 0.375], degenerate wrong text in (0, 0.25].
    """
    wrong, degenerate, no_work, bad, no_unit, chars = preference_key(prompt, response, answer)
    penalty = bad + (no_unit + chars / (chars + 1)) / 2
    return (4 * (1 - wrong) + 2 * (1 - degenerate) + (1 - no_work) + 1 / (1 + penalty)) / 8


def hidden_preference_reward(prompts, completions, *, answer, **_columns) -> list[float]:
    """`hidden_score` as a reward function ("rlpost.rlhf.simulated_labeler:hidden_preference_reward"):
    run at weight 0 it logs the hidden preference every step (reward/...) without training on it."""
    return [hidden_score(p, completion_text(c), a) for p, c, a in zip(prompts, completions, answer)]


def hidden_win_rate(prompts, answers, responses_a, responses_b, seed: int = 0, resamples: int = 1000) -> dict:
    """How often A's response beats B's to the same prompt under the hidden preference (a tie
    counts half), with a percentile bootstrap 95 % interval over prompts."""
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
