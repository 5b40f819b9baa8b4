"""The pretraining corpus: true arithmetic, no held-out problem, the same text for a seed."""

import re

from rlpost.corpus import EQUATION, synthetic_corpus
from rlpost.tasks import TASKS, held_out_prompts

TRUE = {"+": lambda a, b, c: a + b == c, "-": lambda a, b, c: a - b == c,
        "*": lambda a, b, c: a * b == c, "/": lambda a, b, c: b * c == a}


def test_every_equation_in_the_corpus_is_true():
    equations = [eq for doc in synthetic_corpus(2000) for eq in EQUATION.findall(doc)]
    assert len(equations) > 5000
    for eq in equations:
        a, op, b, c = re.fullmatch(r"(\d+) (\S) (\d+) = (\d+)", eq).groups()
        assert TRUE[op](int(a), int(b), int(c)), eq


def test_no_held_out_prompt_in_the_corpus_and_same_text_for_a_seed():
    corpus = synthetic_corpus(2000)
    lines = {line for doc in corpus for line in doc.splitlines()}
    for task in TASKS:
        assert not lines & held_out_prompts(task), task
    assert corpus == synthetic_corpus(2000)
    assert corpus != synthetic_corpus(2000, seed=1)
