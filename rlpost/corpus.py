"""The embedded pretraining corpus: text rendered from the synthetic task world.

It plays the part of "internet text" for the tiny models: problem statements (without worked
solutions: those are the scarce SFT material), bare scratch-work arithmetic beside some of
them, the arithmetic of many more problems on its own, arithmetic facts, how words are spelled,
and decimal comparisons. A base model trained on it knows the facts and the language of the
tasks but has never seen a worked solution, so SFT and RL have something to teach.
"""

from __future__ import annotations

import random

from rlpost.tasks import STEP, TASKS, arithmetic, held_out_prompts, word_list


def _arithmetic_facts(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(4, 10)):
        a, b = rng.randint(0, 60), rng.randint(0, 30)
        op = rng.choice("+-*")
        if op == "-" and b > a:
            a, b = b, a
        if op == "*":
            a, b = rng.randint(0, 20), rng.randint(0, 20)
        lines.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}.")
    return " ".join(lines)


def _spellings(rng: random.Random) -> str:
    words = rng.sample(word_list(), rng.randint(3, 8))
    return "\n".join(f"{w}: {','.join(w)}" for w in words)


def _comparisons(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, b = round(rng.uniform(0, 20), rng.randint(1, 2)), round(rng.uniform(0, 20), rng.randint(1, 2))
        if a != b:
            lines.append(f"{max(a, b)} is bigger than {min(a, b)}.")
    return " ".join(lines)


def _problem_statements(rng: random.Random) -> str:
    # Prompts come from a stream of their own; held-out prompts are left out, so evaluation
    # problems are unseen even as plain text.
    task = rng.choice(sorted(TASKS))
    prompts = (TASKS[task](rng).prompt for _ in range(rng.randint(2, 5)))
    return "\n".join(p for p in prompts if p not in held_out_prompts(task))


def _bare_arithmetic(solution: str) -> str:
    """A worked solution's steps without its words: "3 * 4 = 12. 12 + 5 = 17."."""
    return ". ".join(m.group(0) for m in STEP.finditer(solution)) + "."


def _scratch_work(rng: random.Random) -> str:
    # Word problems next to the bare arithmetic that solves them, the way scratch work shows up
    # in real text: the numbers and operations, but no worded solution and no final answer line.
    lines = []
    for _ in range(rng.randint(1, 3)):
        problem = arithmetic(rng)
        if problem.prompt in held_out_prompts("arithmetic"):
            continue
        lines.append(problem.prompt + "\n" + _bare_arithmetic(problem.solution))
    return "\n\n".join(lines)


def _equations(rng: random.Random) -> str:
    # The bare arithmetic of several word problems, one problem per line: the sums, differences
    # and products the tasks need, at their sizes. Facts are what the tiny models get wrong most
    # (a false step such as "28 - 16 = 10" is in almost every wrong answer), and this teaches
    # them far more densely than scratch work, which spends most of its tokens on the statement.
    lines = []
    for _ in range(rng.randint(3, 8)):
        lines.append(_bare_arithmetic(arithmetic(rng).solution))
    return "\n".join(lines)


# Arithmetic fills most documents. Scratch work teaches copying numbers out of a problem
# statement, which nothing else teaches as directly; bare equations teach the facts. Twice as many
# equation documents (4 scratch, 8 equations) gave a weaker SFT model than this mix.
DOCUMENT_KINDS = (
    [_arithmetic_facts, _spellings, _comparisons, _problem_statements] + [_scratch_work] * 5 + [_equations] * 4
)


def synthetic_corpus(num_docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(f"corpus/{seed}")
    return [rng.choice(DOCUMENT_KINDS)(rng) for _ in range(num_docs)]
