"""Finding and cleaning the final answer in a model's completion.

Shared by the built-in rewards that compare a model's answer with a gold answer
(`math`, `letter_count`, `spelling`). Everything here is plain string work: no
parsing of mathematics, no timeouts, safe to call from any thread.

Where the final answer is taken from, in order of preference:

1. the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced;
2. the last ``#### N`` (GSM8K style);
3. the last "The answer is X" / "Answer: X" phrase (the rest of that sentence);
4. otherwise the last number in the text.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED_COMMAND = re.compile(r"\\(?:boxed|fbox)\b\s*")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
# "The answer is X", "the final answer is: X", "Answer: X", "**Answer:** X".
# Only the phrase itself is matched, so that phrases later on the same line are found too.
_ANSWER_PHRASE = re.compile(r"(?:\banswer\s+is\b|\banswer\b\s*\**\s*:)[ \t*:]*", re.IGNORECASE)
# A number as models write them: sign, thousands commas, decimals, a simple fraction.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")
# A sentence ends at a period that is not a decimal point (".5", "3.0").
_SENTENCE_END = re.compile(r"\.(?!\d)")
_THOUSANDS_COMMA = re.compile(r"(?<=\d)(?:,|\{,\})(?=\d{3}(?!\d))")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
# A number followed only by words: "12 apples", "5 cm", "3 dollars per hour". Not
# "5x" or "5 x" (algebra) and not "2 pi" or "3 sqrt 2" (mathematics written in words).
_NUMBER_THEN_WORDS = re.compile(
    r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s+(?!(?:pi|sqrt|sin|cos|tan|log|ln)\b)[A-Za-z]{2,}[A-Za-z .'/-]*"
)
_ASSIGNMENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\s*=\s*([^=]+)")
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def last_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` in `text`, or None.

    Braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. An
    unbraced ``\\boxed 5`` gives ``5``. A box whose braces never close is ignored.
    """
    for match in reversed(list(_BOXED_COMMAND.finditer(text))):
        rest = text[match.end() :]
        if not rest.startswith("{"):
            token = re.match(r"[^\s$]+", rest)
            if token:
                return token.group(0)
            continue
        depth = 0
        for position, char in enumerate(rest):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return rest[1:position]
    return None


def _first_sentence(text: str) -> str:
    end = _SENTENCE_END.search(text)
    return text[: end.start()] if end else text


def last_answer_phrase(text: str, whole_line: bool = False) -> str | None:
    """The X of the last "The answer is X" / "Answer: X" in `text`.

    X runs to the end of its sentence, or of its line if `whole_line`.
    """
    cut = (lambda phrase: phrase) if whole_line else _first_sentence
    phrases = [cut(text[m.end() :].split("\n", 1)[0]).strip() for m in _ANSWER_PHRASE.finditer(text)]
    phrases = [phrase for phrase in phrases if phrase]
    return phrases[-1] if phrases else None


def extract_final_answer(text: str) -> str | None:
    """Return the raw final-answer string of a completion, or None if there is none.

    See the module docstring for the order of preference. The result is not
    cleaned; pass it to `clean_answer`.
    """
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    hashes = [m.group(1).strip() for m in _HASHES.finditer(text)]
    hashes = [h for h in hashes if h]
    if hashes:
        return hashes[-1]
    phrase = last_answer_phrase(text)
    if phrase is not None:
        return phrase
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1]
    return None


def extract_gold_answer(gold: str) -> str:
    """Return the answer part of a gold answer.

    Gold answers may be a bare value ("13", "\\frac{1}{2}"), a GSM8K solution
    ending in "#### 72" or a solution with a ``\\boxed{}`` answer.
    """
    if "####" in gold:
        tail = gold.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else ""
    boxed = last_boxed(gold)
    if boxed is not None:
        return boxed.strip()
    return gold.strip()


def _strip_math_delimiters(text: str) -> str:
    changed = True
    while changed:
        changed = False
        for opening, closing in _MATH_DELIMITERS:
            if len(text) > len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
                text = text[len(opening) : -len(closing)].strip()
                changed = True
    return text


def clean_answer(answer: str) -> str:
    """Normalise an extracted answer string for comparison.

    - trailing punctuation, markdown emphasis and enclosing math delimiters go;
    - "x = 5" becomes "5" (a single assignment keeps its right-hand side);
    - currency goes: "$3", "\\$3", "3 dollars" become "3";
    - percent signs go: "50%", "50\\%", "50 percent" become "50" (a percent is
      read as the number in front of it; see `rewards.math` for why);
    - thousands separators go: "1,000" and "1{,}000" become "1000";
    - a number followed only by words ("12 apples", "5 cm") becomes the number.

    Anything else (LaTeX such as ``\\frac{1}{2}``, expressions, intervals) is
    left for the mathematical comparison.
    """
    text = answer.strip()
    text = text.strip("*_ \t\n")
    text = text.rstrip(".,;:!?")
    text = _strip_math_delimiters(text.strip())
    text = text.rstrip(".,;:!?").strip()
    assignment = _ASSIGNMENT.fullmatch(text)
    if assignment:
        text = assignment.group(1).strip()
    # Currency: a dollar sign glued to a number is never a math delimiter here,
    # because whole-string delimiters were removed above.
    text = text.replace("\\$", "")
    text = re.sub(r"\$(?=\s*[-+]?[\d.])", "", text)
    text = re.sub(r"\s*(?:\\%|%|\\text\{\s*%\s*\}|\bpercent\b)", "", text)
    text = _THOUSANDS_COMMA.sub("", text)
    text = text.strip()
    if not _PLAIN_NUMBER.fullmatch(text):
        number_then_words = _NUMBER_THEN_WORDS.fullmatch(text)
        if number_then_words:
            text = number_then_words.group(1)
    return text


def as_fraction(text: str) -> Fraction | None:
    """Exact value of a plain number ("3", "-0.25", "3.0", "7/2"), else None."""
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


_NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve "
        "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


def as_integer(text: str) -> int | None:
    """Integer value of a cleaned answer: digits ("3", "3.0") or a word ("three")."""
    value = as_fraction(text)
    if value is not None:
        return int(value) if value.denominator == 1 else None
    return _NUMBER_WORDS.get(text.strip().lower())
