"""Math answer correctness: 1.0 if the model's final answer equals the gold answer.

The final answer is extracted as described in `rewards.answers` (``\\boxed{}``,
``#### N``, "The answer is N", "Answer: N", else the last number) and cleaned
(currency, units, thousands commas, "x = 5"). Two answers are compared:

1. exactly, when both are plain numbers ("3.0" == "3", "1000" == "1,000");
2. otherwise with math-verify (``verify(parse(gold), parse(pred))``), which knows
   LaTeX (``\\frac{1}{2}`` == 0.5, ``\\sqrt{4}`` == 2, intervals, sets, equations);
3. if math-verify cannot read one side, with sympy on plain arithmetic
   ("3/4*2", "2^10"), else by normalised string equality.

Percents: a percent sign is read as a unit and dropped, so "50%" means 50. That
matches how GSM8K and MATH state answers to "what percent ..." questions (the
bare number). math-verify on its own is lenient and accepts "50%" for both 50
and 0.5; rlpost does not, so a model cannot be rewarded for two different
numbers: "50%" matches gold 50 or "50\\%" but not gold 0.5.

Thread safety and time: math-verify's own timeouts use ``signal.alarm``, which
fails outside a main thread, so they are switched off here
(``parsing_timeout=None``, ``timeout_seconds=None``); the reward process
(`rlpost.scoring.process`) enforces time by killing it. Answers that can make
sympy run for ever (power towers such as ``10^{10^{100}}``, exponents or
factorials of 1000 and more, answers longer than `MAX_ANSWER_CHARS`) are scored
0.0 without being evaluated.
"""

from __future__ import annotations

import logging
import re

import sympy
from math_verify import parse, verify

from rewards.answers import as_fraction, clean_answer, extract_final_answer, extract_gold_answer
from rewards.base import score_against_answer

# math-verify warns on every call that its timeout is disabled; we enforce time
# ourselves (see module docstring), so the warning is noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 300

_EXPLOSIVE = re.compile(
    r"\^\s*\{[^}]*\^"  # a power inside an exponent: 10^{10^{100}}
    r"|\^\s*\d+\s*\^"  # 9^9^9 without braces
    r"|\^\s*\{?\s*\(?\s*\d{4,}"  # exponent of 1000 or more
    r"|\*\*"  # Python-style power
    r"|\d{4,}\s*!"  # factorial of 1000 or more
    r"|\\uparrow"
)
_SAFE_ARITHMETIC = re.compile(r"[0-9+\-*/^().\s]+")


def answers_match(gold: str, predicted: str) -> bool:
    """Whether a cleaned predicted answer equals a cleaned gold answer (see module doc)."""
    if not predicted or not gold:
        return False
    if len(predicted) > MAX_ANSWER_CHARS or _EXPLOSIVE.search(predicted):
        return False
    gold_value, predicted_value = as_fraction(gold), as_fraction(predicted)
    if gold_value is not None and predicted_value is not None:
        if gold_value == predicted_value:
            return True
        if gold_value.denominator == 1 and predicted_value.denominator == 1:
            return False
        # Unequal decimals may still agree to math-verify's rounding (0.333333 vs 1/3).
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    predicted_parsed = parse(f"${predicted}$", parsing_timeout=None)
    if gold_parsed and predicted_parsed:
        return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))
    sympy_verdict = _sympy_arithmetic_equal(gold, predicted)
    if sympy_verdict is not None:
        return sympy_verdict
    return _squash(gold) == _squash(predicted)


def _sympy_arithmetic_equal(gold: str, predicted: str) -> bool | None:
    """Compare two plain arithmetic expressions with sympy; None if either is not one.

    Only digits, operators and parentheses are accepted, because sympy's parser
    evaluates its input as Python.
    """
    if not (_SAFE_ARITHMETIC.fullmatch(gold) and _SAFE_ARITHMETIC.fullmatch(predicted)):
        return None
    try:
        gold_value = sympy.sympify(gold.replace("^", "**"), rational=True)
        predicted_value = sympy.sympify(predicted.replace("^", "**"), rational=True)
        return bool(sympy.simplify(gold_value - predicted_value) == 0)
    except (sympy.SympifyError, TypeError, SyntaxError, ZeroDivisionError):
        return None


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def score_math(completion: str, gold: str) -> float:
    """1.0 if the completion's final answer equals the gold answer, else 0.0."""
    predicted = extract_final_answer(completion)
    if predicted is None:
        return 0.0
    expected = clean_answer(extract_gold_answer(str(gold)))
    return 1.0 if answers_match(expected, clean_answer(predicted)) else 0.0


def math_reward(prompts, completions, answer=None, **_columns) -> list[float | None]:
    """Batched math correctness reward; needs the ``answer`` column.

    A sample whose gold answer is None gets None (no opinion).
    """
    return score_against_answer(score_math, completions, answer)
