"""The pretraining corpus: true arithmetic, no held-out problem, the same text for a seed, and the
spellings that the quickstart's tasks ask for."""

import re
from pathlib import Path

import yaml

from rlpost.corpus import synthetic_corpus
from rlpost.tasks import STEP, TASKS, VERIFIERS, held_out_prompts, make_problems

CONFIGS = Path(__file__).resolve().parents[1] / "recipes/configs"
# A spelling line of the corpus: "cat: c,a,t".
SPELLING_LINE = re.compile(r"^([a-z]+): ([a-z](?:,[a-z])*)$", re.MULTILINE)


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


def words_spelled(docs: list[str]) -> set[str]:
    return {word for doc in docs for word, letters in SPELLING_LINE.findall(doc) if letters.replace(",", "") == word}


def held_out_words_not_spelled(task: str, docs: list[str], n: int) -> list[str]:
    """Words of `task`'s first `n` held-out answers (spellings such as "c,a,t") that no corpus line spells."""
    spelled = words_spelled(docs)
    words = ("".join(re.findall(r"[a-z]", p.answer)) for p in make_problems(task, "eval", n))
    return [word for word in words if word not in spelled]


def test_words_spelled_reads_only_correct_spelling_lines():
    docs = ["cat: c,a,t\ndog: d,o,g", "Spell the word 'cat' letter by letter.", "bird: b,i,r\nfish: f i s h"]
    assert words_spelled(docs) == {"cat", "dog"}


def test_held_out_words_not_spelled_finds_exactly_the_missing_words():
    first, second, third = ("".join(p.answer.split(",")) for p in make_problems("spelling", "eval", 3))
    docs = [f"{first}: {','.join(first)}\n{third}: {','.join(third)}"]
    assert held_out_words_not_spelled("spelling", docs, 3) == [second]
    assert held_out_words_not_spelled("spelling", [], 3) == [first, second, third]


def test_quickstart_asks_for_no_spelling_its_corpus_never_shows():
    # A task whose answer is a spelling needs every held-out word spelled in the corpus (needed, not
    # enough): the tiny model cannot read letters out of its multi-letter tokens. `spelling` draws
    # from 84,737 words, 171 of its 200 held-out words are spelled nowhere in the corpus, and it
    # scored 0.000 held-out at every SFT checkpoint (bench/results/quickstart.json).
    sft = yaml.safe_load((CONFIGS / "sft_tiny.yaml").read_text())
    pretrain = yaml.safe_load((CONFIGS / "pretrain_tiny.yaml").read_text())
    docs = synthetic_corpus(pretrain["data"]["synthetic_docs"])
    n = sft["final_eval"]["problems_per_task"]
    unteachable = {
        task for task in TASKS if VERIFIERS[task] == "spelling" and held_out_words_not_spelled(task, docs, n)
    }
    asked = sorted(unteachable & set(sft["data"]["tasks"]))
    assert not asked, f"the quickstart's SFT asks for spellings its corpus never shows: {asked}"
