"""The pretraining corpus: true arithmetic, no held-out problem, the same text for a seed."""

from rlpost.corpus import synthetic_corpus
from rlpost.tasks import STEP, TASKS, held_out_prompts


def test_every_equation_in_the_corpus_is_true():
    equations = [eq for doc in synthetic_corpus(2000) for eq in STEP.findall(doc)]
    assert len(equations) > 5000
    for a, op, b, c in equations:
        assert eval(f"{a}{op}{b}") == int(c), (a, op, b, c)


def test_no_held_out_prompt_in_the_corpus_and_same_text_for_a_seed():
    corpus = synthetic_corpus(2000)
    lines = {line for doc in corpus for line in doc.splitlines()}
    for task in TASKS:
        assert not lines & held_out_prompts(task), task
    assert corpus == synthetic_corpus(2000)
    assert corpus != synthetic_corpus(2000, seed=1)
