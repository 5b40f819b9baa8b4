"""Built-in rewards on tricky answers, and the math reward on all of GSM8K test."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import pytest

import rewards
from rewards import BUILTIN_REFERENCES, BUILTIN_REWARDS, per_sample
from rewards.answers import clean_answer, extract_final_answer, extract_gold_answer
from rewards.format import format_reward
from rewards.length import length_reward, overlong_penalty, overlong_reward
from rewards.math import math_reward
from rewards.spelling import letter_count_reward, spelling_reward

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl.gz"


def score_math(completion: str, gold: str) -> float | None:
    return math_reward(["prompt"], [completion], answer=[gold])[0]


# One tiny batch per built-in: (completions, columns, expected values).
BUILTIN_CASES = {
    "math": (["The answer is 4", "The answer is 5", "x"], {"answer": ["4", "4", None]}, [1.0, 0.0, None]),
    "letter_count": (["There are 3 r's in strawberry.", r"\boxed{2}"], {"answer": [3, "3"]}, [1.0, 0.0]),
    "spelling": (["The answer is S-T-R-A-W.", "straw"], {"answer": ["s-t-r-a-w"] * 2}, [1.0, 0.0]),
    "format": (["<think>add</think> The answer is 5.", "five"], {}, [1.0, 0.0]),
    "length": (["x", "x"], {"num_tokens": [25, 50], "max_tokens": [100, 100]}, [-0.25, -0.5]),
    "overlong": (["x", "x"], {"num_tokens": [10, 101], "max_tokens": [100, 100]}, [0.0, -1.0]),
    "code": (
        ["```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b): return a - b", "x"],
        {"tests": ["assert add(2, 3) == 5"] * 2 + [None]},
        [1.0, 0.0, None],
    ),
}


def test_every_builtin_has_a_case():
    # "reward_model" needs a trained reward model folder: tests/test_reward_model.py covers it.
    assert set(BUILTIN_REFERENCES) - {"reward_model"} == set(BUILTIN_CASES)


@pytest.mark.parametrize("name", sorted(BUILTIN_CASES))
def test_every_builtin_loads_by_name_and_scores(name):
    from rlpost.scoring.references import call_reward_fn, load_reward_fn

    function = load_reward_fn(name)
    assert function is BUILTIN_REWARDS[name] is load_reward_fn(BUILTIN_REFERENCES[name])
    completions, columns, expected = BUILTIN_CASES[name]
    columns = {**columns, "task": ["t"] * len(completions)}  # every reward also gets columns it ignores
    assert call_reward_fn(function, ["p"] * len(completions), completions, columns) == expected


def test_reward_functions_are_attributes_of_the_package():
    assert rewards.math_reward is math_reward


@pytest.mark.parametrize(
    "completion, gold",
    [
        (r"So the result is \boxed{\frac{1}{2}}.", "0.5"),
        ("The answer is 0.5", r"\frac{1}{2}"),
        ("The answer is $\\frac{3}{4}$.", "0.75"),
        ("She pays $1,000 in total.", "1000"),
        ("The answer is $1,000.", "#### 1,000"),
        ("Adding up: 70 + 2\n#### 72", "72"),
        ("x = 5", "5"),
        ("Solving gives $x = 5$", "5"),
        ("The answer is 3.0.", "3"),
        ("The answer is 3.", "3.0"),
        ("Answer: 18", "Janet sells 9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"),
        ("The answer is 12 apples.", "12"),
        ("The answer is 1,000 dollars.", "1000"),
        ("The answer is \\$3.50", "3.5"),
        ("The answer is -7", "-7"),
        ("The answer is **42**.", "42"),
        (r"\boxed{\sqrt{4}}", "2"),
        ("The answer is x^2+2x+1", "(x+1)^2"),
        (r"The final answer is $\boxed{(1,2)}$", r"\boxed{(1, 2)}"),
        ("the answer is 2^10", "1024"),
        ("I think the answer is 4. Wait, no: the answer is 5.", "5"),
        ("First 3 then 7, finally 10", "10"),
    ],
)
def test_math_accepts_equal_answers(completion, gold):
    assert score_math(completion, gold) == 1.0


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("The answer is 4.", "3"),
        (r"\boxed{\frac{1}{3}}", "0.5"),
        ("The answer is 1,001", "1000"),
        ("I have no idea.", "3"),  # no number at all
        ("", "3"),
        ("The answer is 5. Actually the answer is 6.", "5"),  # the last statement counts
        ("#### 71", "#### 72"),
        ("The answer is 5", "5x"),  # units are dropped, algebra is not
        # Power towers are not evaluated (they can make sympy run for ever).
        ("The answer is 10^{10^{100}}", "10"),
    ],
)
def test_math_rejects_wrong_answers(completion, gold):
    assert score_math(completion, gold) == 0.0


def test_math_percent_is_the_number_in_front_of_it():
    # rlpost reads "50%" as 50 (see rewards.math), unlike math-verify, which also accepts 0.5.
    assert score_math("The answer is 50%.", "50") == 1.0
    assert score_math("The answer is 50", r"50\%") == 1.0
    assert score_math("The answer is 50 percent.", "50") == 1.0
    assert score_math("The answer is 50%.", "0.5") == 0.0
    assert score_math("The answer is 0.5", r"50\%") == 0.0


def test_math_gives_none_without_gold_and_raises_without_answer_column():
    assert math_reward(["p", "p"], ["The answer is 3", "3"], answer=[None, "3"]) == [None, 1.0]
    with pytest.raises(ValueError, match="answer"):
        math_reward(["p"], ["The answer is 3"])


def test_math_accepts_conversational_completions():
    completion = [{"role": "assistant", "content": "The answer is 7."}]
    assert math_reward(["p"], [completion], answer=["7"]) == [1.0]


def test_math_works_outside_the_main_thread():
    # math-verify's own timeouts use signal.alarm, which fails in other threads.
    results = []
    thread = threading.Thread(
        target=lambda: results.append(math_reward(["p"] * 2, [r"\boxed{\frac12}", "x = 4"], answer=["0.5", "5"]))
    )
    thread.start()
    thread.join(timeout=30)
    assert results == [[1.0, 0.0]]


def test_answer_extraction_order_and_cleaning():
    assert extract_final_answer(r"The answer is 3, i.e. \boxed{4}") == "4"
    assert extract_final_answer("#### 8\nThe answer is 9") == "8"
    assert extract_final_answer("Answer: 2. Also 5 apples") == "2"
    assert extract_final_answer("7 apples and 9 pears") == "9"
    assert extract_final_answer("nothing here") is None
    assert extract_gold_answer("step <<1+1=2>>2\n#### 1,250") == "1,250"
    assert clean_answer("$1,250.") == "1250"
    assert clean_answer(r"$\frac{1}{2}$") == r"\frac{1}{2}"
    assert clean_answer("y = -3") == "-3"


def read_gsm8k_test() -> list[dict]:
    with gzip.open(GSM8K_TEST, "rt") as lines:
        return [json.loads(line) for line in lines]


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="GSM8K test split not available")
def test_math_on_every_gsm8k_test_problem():
    problems = read_gsm8k_test()
    assert len(problems) == 1319
    golds = [problem["answer"] for problem in problems]
    numbers = [gold.rsplit("####", 1)[1].strip() for gold in golds]
    prompts = [problem["question"] for problem in problems]
    right = [f"Let me work it out step by step. The answer is {number}." for number in numbers]
    wrong = [
        f"Let me work it out step by step. The answer is {int(number.replace(',', '')) + 1}." for number in numbers
    ]

    started = time.perf_counter()
    right_scores = math_reward(prompts, right, answer=golds)
    wrong_scores = math_reward(prompts, wrong, answer=golds)
    elapsed = time.perf_counter() - started

    failed_right = [number for number, score in zip(numbers, right_scores) if score != 1.0]
    failed_wrong = [number for number, score in zip(numbers, wrong_scores) if score != 0.0]
    assert not failed_right, failed_right[:10]
    assert not failed_wrong, failed_wrong[:10]
    print(f"\n2 x {len(problems)} GSM8K checks (plain numbers) in {elapsed:.2f}s")
    assert elapsed < 30


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="GSM8K test split not available")
def test_math_verify_path_on_every_gsm8k_test_problem():
    # Plain numbers are compared exactly without math-verify; LaTeX answers such as
    # \frac{2N}{2} go through math-verify, so this checks that path on the same golds.
    problems = read_gsm8k_test()
    golds = [problem["answer"] for problem in problems]
    numbers = [int(gold.rsplit("####", 1)[1].strip().replace(",", "")) for gold in golds]
    prompts = [problem["question"] for problem in problems]
    right = [f"The answer is $\\frac{{{2 * number}}}{{2}}$." for number in numbers]
    wrong = [f"The answer is $\\frac{{{2 * number + 1}}}{{2}}$." for number in numbers]

    started = time.perf_counter()
    right_scores = math_reward(prompts, right, answer=golds)
    wrong_scores = math_reward(prompts, wrong, answer=golds)
    elapsed = time.perf_counter() - started

    assert right_scores == [1.0] * len(problems)
    assert wrong_scores == [0.0] * len(problems)
    print(f"\n2 x {len(problems)} GSM8K checks (through math-verify) in {elapsed:.2f}s")
    assert elapsed < 60


def test_letter_count():
    completions = [
        "There are 3 r's in strawberry.",
        "The answer is three.",
        r"\boxed{2}",
        "Let me count: s-t-r-a-w-b-e-r-r-y. No idea.",
    ]
    assert letter_count_reward(["p"] * 4, completions, answer=[3, "3", 3, 3]) == [1.0, 1.0, 0.0, 0.0]


def test_spelling():
    completions = [
        "The answer is S-T-R-A-W.",
        "Sure!\ns t r a w",
        "strawberry",  # not spelled out
        "Sure!\nS, T, R, A, X",
        r"\boxed{s, t, r, a, w}",
    ]
    assert spelling_reward(["p"] * 5, completions, answer=["s-t-r-a-w"] * 5) == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_format_answer_phrase_and_thinking_tags():
    completions = [
        "<think>add them</think> The answer is 5.",
        "The answer is 5",  # no tags: fine
        "<think><think>nested</think></think> The answer is 5",
        "<think>never closed. The answer is 5",
        "</think> The answer is 5 <think>",
        "<think>The answer is 5</think> so five",  # the phrase only inside the thinking
        "five, I guess",
    ]
    assert format_reward(["p"] * 7, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward(["p"] * 7, completions, partial=True) == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert format_reward(["p"] * 2, completions[:2], require_think=True) == [1.0, 0.0]


def test_length_penalties():
    assert length_reward(["p"] * 3, ["", "abcd", "a" * 20], max_length=10) == [0.0, -0.4, -1.0]
    assert length_reward(["p"] * 2, ["x", "x"], num_tokens=[25, 50], max_tokens=[100, 100]) == [-0.25, -0.5]
    scores = overlong_reward(["p"] * 4, ["x"] * 4, num_tokens=[10, 85, 90, 101], max_tokens=[100] * 4)
    assert scores == [0.0, -0.25, -0.5, -1.0]
    assert overlong_reward(["p"], ["x" * 95], max_length=100, buffer=10) == [-0.5]
    assert overlong_penalty(100, 100, 20) == -1.0
    with pytest.raises(ValueError, match="max_length"):
        overlong_reward(["p"], ["x"], max_tokens=[100])  # tokens limit, character count


def test_per_sample_decorator_sync_and_async():
    @per_sample
    def exact(prompt, completion, answer):
        return 1.0 if completion == answer else 0.0

    assert exact(["p", "p"], ["a", "b"], answer=["a", "a"]) == [1.0, 0.0]

    @per_sample
    async def exact_async(prompt, completion, answer):
        return 1.0 if completion == answer else 0.0

    import asyncio

    assert asyncio.run(exact_async(["p", "p"], ["a", "b"], answer=["a", "a"])) == [1.0, 0.0]
