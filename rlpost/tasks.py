"""Seeded synthetic tasks with verifiable answers, and the textbook split of each task.

Every generator returns `Problem(task, prompt, solution, answer)`: `solution` is a worked
solution ending in "The answer is X." and `answer` is the bare final answer a reward checks.

The split follows a textbook: worked examples are scarce (`sft`: a limited, configurable
number of problems with solutions), practice problems with only an answer key are plentiful
(`rl`: prompts + answers), and held-out problems (`eval`) are in neither. The three splits
draw from separate random streams and exclude every held-out prompt.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from rlpost.tokenizer import OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START


@dataclass(frozen=True)
class Problem:
    task: str
    prompt: str
    solution: str  # worked solution, ends with "The answer is {answer}."
    answer: str


NAMES = [
    "Emily",
    "Liam",
    "Sofia",
    "Noah",
    "Ava",
    "Mateo",
    "Mia",
    "Lucas",
    "Zara",
    "Omar",
    "Chloe",
    "Ethan",
    "Priya",
    "Kenji",
    "Hana",
    "Diego",
    "Nora",
    "Felix",
    "Amara",
    "Leo",
]
ITEMS = [
    ("apple", "apples"),
    ("orange", "oranges"),
    ("pencil", "pencils"),
    ("book", "books"),
    ("cookie", "cookies"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("card", "cards"),
    ("banana", "bananas"),
    ("toy car", "toy cars"),
    ("notebook", "notebooks"),
    ("cupcake", "cupcakes"),
]
CONTAINERS = ["boxes", "bags", "baskets", "jars", "crates", "packs"]


def _answer(steps: list[str], answer: int | str) -> str:
    return " ".join(steps + [f"The answer is {answer}."])


# --- arithmetic word problems -------------------------------------------------------------
# Each template picks numbers from `rng` and returns (prompt, steps, answer). Templates have two
# or three steps; the difficulty level is the largest number a template draws (see
# ARITHMETIC_LEVELS). Every intermediate value is a whole number.


def _buy_total(rng: random.Random, hi: int):
    name = rng.choice(NAMES)
    (a1, a1s), (a2, a2s) = rng.sample(ITEMS, 2)
    a, b, p, q = (rng.randint(2, hi) for _ in range(4))
    prompt = (
        f"{name} buys {a} {a1s} and {b} {a2s}. Each {a1} costs ${p} and each {a2} costs ${q}. "
        f"How much does {name} spend in total?"
    )
    steps = [
        f"The {a1s} cost {a} * {p} = {a * p}.",
        f"The {a2s} cost {b} * {q} = {b * q}.",
        f"The total is {a * p} + {b * q} = {a * p + b * q}.",
    ]
    return prompt, steps, a * p + b * q


def _unit_price(rng: random.Random, hi: int):
    # The seed's example: the total is known, find the price of one item.
    name = rng.choice(NAMES)
    (a1, a1s), (a2, a2s) = rng.sample(ITEMS, 2)
    a, b, p, q = (rng.randint(2, hi) for _ in range(4))
    total = a * p + b * q
    prompt = (
        f"{name} buys {a} {a1s} and {b} {a2s}. Each {a2} costs ${q}. The total cost is ${total}. "
        f"What is the cost of each {a1}?"
    )
    steps = [
        f"The {a2s} cost {b} * {q} = {b * q}.",
        f"The {a1s} cost {total} - {b * q} = {a * p}.",
        f"Each {a1} costs {a * p} / {a} = {p}.",
    ]
    return prompt, steps, p


def _give_away(rng: random.Random, hi: int):
    name = rng.choice(NAMES)
    _, items = rng.choice(ITEMS)
    k, m = rng.randint(2, hi), rng.randint(2, 9)
    n = k * m + rng.randint(1, 3 * hi)
    prompt = f"{name} has {n} {items}. {name} gives {k} {items} to each of {m} friends. How many {items} are left?"
    steps = [f"{name} gives away {k} * {m} = {k * m}.", f"{n} - {k * m} = {n - k * m} are left."]
    return prompt, steps, n - k * m


def _containers(rng: random.Random, hi: int):
    name = rng.choice(NAMES)
    _, items = rng.choice(ITEMS)
    box = rng.choice(CONTAINERS)
    a, b = rng.randint(2, hi), rng.randint(2, hi)
    c = rng.randint(1, a * b - 1)
    prompt = f"{name} has {a} {box} with {b} {items} in each. {name} loses {c} {items}. How many {items} does {name} have now?"
    steps = [f"{name} starts with {a} * {b} = {a * b}.", f"{a * b} - {c} = {a * b - c}."]
    return prompt, steps, a * b - c


def _ages(rng: random.Random, hi: int):
    x, y, z = rng.sample(NAMES, 3)
    a, b, k = rng.randint(2, hi), rng.randint(1, hi), rng.randint(2, 3)
    word = {2: "twice", 3: "three times"}[k]
    prompt = f"{x} is {a} years old. {y} is {b} years older than {x}. {z} is {word} as old as {y}. How old is {z}?"
    steps = [f"{y} is {a} + {b} = {a + b}.", f"{z} is {k} * {a + b} = {k * (a + b)}."]
    return prompt, steps, k * (a + b)


def _saving(rng: random.Random, hi: int):
    name = rng.choice(NAMES)
    start, per_week, weeks = rng.randint(1, 5 * hi), rng.randint(2, hi), rng.randint(2, 9)
    spend = rng.randint(1, start + per_week * weeks - 1)
    prompt = (
        f"{name} has ${start}. {name} saves ${per_week} each week for {weeks} weeks, "
        f"then spends ${spend} on a gift. How much money does {name} have left?"
    )
    steps = [
        f"{name} saves {per_week} * {weeks} = {per_week * weeks}.",
        f"{name} has {start} + {per_week * weeks} = {start + per_week * weeks}.",
        f"After the gift: {start + per_week * weeks} - {spend} = {start + per_week * weeks - spend}.",
    ]
    return prompt, steps, start + per_week * weeks - spend


# One step of a worked arithmetic solution, "a op b = result", with the four parts as groups.
STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")

ARITHMETIC_TEMPLATES = [_buy_total, _unit_price, _give_away, _containers, _ages, _saving]
# Difficulty levels, as the largest number a template draws, one picked uniformly per problem.
# Level 5 is the size of the classic "3 apples and 2 oranges ... $13" example; level 12 has
# products up to 144 and sums near 300, which the tiny models rarely get right.
ARITHMETIC_LEVELS = (5, 8, 12)


def arithmetic(rng: random.Random, levels: tuple[int, ...] = ARITHMETIC_LEVELS) -> Problem:
    prompt, steps, answer = rng.choice(ARITHMETIC_TEMPLATES)(rng, rng.choice(levels))
    return Problem("arithmetic", prompt, _answer(steps, answer), str(answer))


# --- letters --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """English words of 3-10 letters from the `english-words` package (no network needed)."""
    from english_words import get_english_words_set

    words = get_english_words_set(["gcide"], lower=True, alpha=True)
    return tuple(sorted(w for w in words if 3 <= len(w) <= 10))


SPELLING_BEE_PROMPTS = [
    "How many '{l}' are in {w}?",
    "How many times does the letter '{l}' appear in the word '{w}'?",
    "Count the number of '{l}' in '{w}'.",
    "In the word {w}, how many {l}'s are there?",
    "how many {l} in {w}",
    'What is the count of the letter {l} in "{w}"?',
    "Can you tell me how many '{l}' there are in the word {w}?",
]


def spelling_bee(rng: random.Random, with_tool: bool = False) -> Problem:
    """Letter counting, laid out as the manual method: restate the word, spell it out, count with
    a running counter. `with_tool` adds the Python check (`'word'.count('l')`) before the answer."""
    word = rng.choice(word_list())
    # Mostly ask for a letter that is in the word, otherwise any letter (the count may be 0).
    letter = rng.choice(word) if rng.random() < 0.7 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    prompt = rng.choice(SPELLING_BEE_PROMPTS).format(l=letter, w=word)
    count, lines = 0, []
    for ch in word:
        if ch == letter:
            count += 1
            lines.append(f"{ch} → {count}")
        else:
            lines.append(ch)
    solution = (
        f"The word is '{word}'. Spelled out: {','.join(word)}.\n"
        f"Counting '{letter}':\n" + "\n".join(lines) + f"\nThat makes {count}."
    )
    if with_tool:
        solution += (
            f" Let me check with Python: {PYTHON_START}'{word}'.count('{letter}'){PYTHON_END}"
            f"{OUTPUT_START}{count}{OUTPUT_END}"
        )
    return Problem("spelling_bee", prompt, solution + f" The answer is {count}.", str(count))


def spelling(rng: random.Random) -> Problem:
    """Spell a word letter by letter. Not in the tiny quickstart: its words come from 84,737 and the
    tiny model never learns the letters inside its tokens (tests/test_corpus.py)."""
    word = rng.choice(word_list())
    prompt = rng.choice(["Spell the word '{w}' letter by letter.", "Spell {w}.", "How do you spell '{w}'?"]).format(
        w=word
    )
    spelled = ",".join(word)
    return Problem("spelling", prompt, f"'{word}' is spelled {spelled}. The answer is {spelled}.", spelled)


# --- number comparison ------------------------------------------------------------------------


def compare_numbers(rng: random.Random) -> Problem:
    """'Which is bigger, 9.11 or 9.9?': the classic trap; the solution pads decimals to equal length."""
    whole = rng.randint(0, 20)
    digits_a, digits_b = rng.randint(1, 2), rng.randint(1, 2)
    while True:
        fa = rng.randint(1, 10**digits_a - 1)
        fb = rng.randint(1, 10**digits_b - 1)
        a, b = f"{whole}.{fa:0{digits_a}d}", f"{whole + rng.choice([0, 0, 0, 1])}.{fb:0{digits_b}d}"
        if float(a) != float(b) and not a.endswith("0") and not b.endswith("0"):
            break
    if rng.random() < 0.5:
        a, b = b, a
    prompt = rng.choice(
        [
            "Which is bigger, {a} or {b}?",
            "Which number is larger: {a} or {b}?",
            "Is {a} bigger than {b}? Answer with the bigger number.",
        ]
    ).format(a=a, b=b)
    width = max(len(a.split(".")[1]), len(b.split(".")[1]))
    pa, pb = (f"{x.split('.')[0]}.{x.split('.')[1].ljust(width, '0')}" for x in (a, b))
    bigger = a if float(a) > float(b) else b
    solution = (
        f"Write both with {width} decimal places: {pa} and {pb}. "
        f"Compare {pa.replace('.', '')} and {pb.replace('.', '')} digit by digit: {bigger} is bigger. "
        f"The answer is {bigger}."
    )
    return Problem("compare", prompt, solution, bigger)


TASKS: dict[str, Callable[..., Problem]] = {
    "arithmetic": arithmetic,
    "spelling_bee": spelling_bee,
    "spelling": spelling,
    "compare": compare_numbers,
}

# The reward (a built-in name from rewards/) that checks each task's answers: a task owns its
# verifier. Held-out accuracy and the `accuracy` of an RL step both come from it.
VERIFIERS: dict[str, str] = {
    "arithmetic": "math",
    "spelling_bee": "letter_count",
    "spelling": "spelling",
    "compare": "math",
    "gsm8k": "math",
}

_SPLIT_STREAMS = {"eval": 1, "sft": 2, "rl": 3}
# Held-out problems come from a fixed pool, so excluding them from the other splits is stable.
EVAL_POOL = 1000


@functools.lru_cache(maxsize=None)
def held_out_prompts(task: str, seed: int = 0, task_kwargs: tuple = ()) -> frozenset[str]:
    return frozenset(p.prompt for p in make_problems(task, "eval", EVAL_POOL, seed, **dict(task_kwargs)))


SOLUTION_FORMATS = ("worked", "think", "answer_first")


def format_solution(solution: str, answer: str, fmt: str) -> str:
    """A worked solution ("<steps> The answer is X.") as SFT shows it, by `fmt`:
    "worked" as is; "think" as "<think><steps></think>\nThe answer is X." (think first, then a clean
    answer for the reader, like R1); "answer_first" as "The answer is X. <steps>" (the answer stated
    first and justified afterwards: no tokens to think with before it)."""
    final = f"The answer is {answer}."
    steps = solution[: -len(final)].rstrip() if solution.endswith(final) else solution
    if fmt == "worked":
        return solution
    if fmt == "think":
        return f"<think>{steps}</think>\n{final}"
    if fmt == "answer_first":
        return f"{final} {steps}".rstrip()
    raise ValueError(f"unknown solution format {fmt!r}; valid formats: {', '.join(SOLUTION_FORMATS)}")


def make_problems(task: str, split: str, n: int, seed: int = 0, **task_kwargs) -> list[Problem]:
    """`n` distinct problems of `task` for `split` ("sft", "rl" or "eval").

    Held-out (`eval`) prompts never appear in `sft` or `rl`; generation is deterministic in
    (task, split, n, seed), and a larger `n` extends a smaller one.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(TASKS)}")
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; valid splits: {sorted(_SPLIT_STREAMS)}")
    if split == "eval" and n > EVAL_POOL:
        raise ValueError(f"at most {EVAL_POOL} held-out problems per task (asked for {n})")
    excluded = set() if split == "eval" else held_out_prompts(task, seed, tuple(sorted(task_kwargs.items())))
    rng = random.Random(f"{task}/{split}/{seed}")
    seen, out = set(), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"task {task!r} cannot produce {n} distinct {split} problems")
        p = TASKS[task](rng, **task_kwargs)
        if p.prompt in seen or p.prompt in excluded:
            continue
        seen.add(p.prompt)
        out.append(p)
    return out
