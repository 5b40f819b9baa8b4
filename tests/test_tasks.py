"""Synthetic tasks: deterministic, verifiable, and split like a textbook."""

import pytest

from rlpost.data import load_gsm8k
from rlpost.tasks import ARITHMETIC_LEVELS, STEP, TASKS, make_problems

SHARED_GSM8K = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/gsm8k"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_deterministic_and_extendable(task):
    a = make_problems(task, "rl", 50, seed=3)
    assert a == make_problems(task, "rl", 50, seed=3)
    assert make_problems(task, "rl", 80, seed=3)[:50] == a


@pytest.mark.parametrize("task", sorted(TASKS))
def test_splits_disjoint_from_held_out(task):
    held_out = {p.prompt for p in make_problems(task, "eval", 300)}
    for split in ("sft", "rl"):
        assert not held_out & {p.prompt for p in make_problems(task, split, 300)}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_worked_solutions_end_with_answer_and_verify(task):
    from rlpost.completions import score_completions

    problems = make_problems(task, "sft", 100)
    assert all(p.solution.endswith(f"The answer is {p.answer}.") for p in problems)
    assert score_completions(problems, [p.solution for p in problems]) == [1.0] * 100


def test_arithmetic_steps_are_correct():
    for p in make_problems("arithmetic", "sft", 300):
        for a, op, b, result in STEP.findall(p.solution):
            assert eval(f"{a}{op}{b}") == int(result), p.solution


def test_arithmetic_levels_set_the_size_of_numbers():
    from statistics import mean

    def mean_answer(levels):
        return mean(int(p.answer) for p in make_problems("arithmetic", "eval", 300, levels=levels))

    easy, hard, mixed = mean_answer((5,)), mean_answer((12,)), mean_answer(ARITHMETIC_LEVELS)
    assert easy < mixed < hard and easy < hard / 3


def test_spelling_bee_layout():
    p = next(p for p in make_problems("spelling_bee", "sft", 100) if int(p.answer) >= 2)
    word = p.solution.split("'")[1]
    assert f"Spelled out: {','.join(word)}." in p.solution
    assert "→ 1" in p.solution and f"→ {p.answer}" in p.solution


def test_compare_trap_is_right():
    for p in make_problems("compare", "eval", 200):
        a, b = [x for x in p.prompt.replace("?", "").replace(",", "").split() if x[0].isdigit()][:2]
        assert float(p.answer) == max(float(a), float(b))


def test_gsm8k_local_loader():
    problems = load_gsm8k(str(SHARED_GSM8K), "test")
    assert len(problems) == 1319
    assert all(p.solution.endswith(f"The answer is {p.answer}.") for p in problems)
    assert "<<" not in problems[0].solution


def test_gsm8k_bad_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "q", "answer": "a\\n#### 3"}\n{"question": "q"}\n')
    with pytest.raises(ValueError, match=r"test.jsonl:2: expected fields"):
        load_gsm8k(str(path))


def test_solution_formats():
    from rlpost.tasks import format_solution

    solution = "Ava has 3 + 4 = 7 apples. The answer is 7."
    assert format_solution(solution, "7", "worked") == solution
    assert format_solution(solution, "7", "think") == "<think>Ava has 3 + 4 = 7 apples.</think>\nThe answer is 7."
    assert format_solution(solution, "7", "answer_first") == "The answer is 7. Ava has 3 + 4 = 7 apples."
    with pytest.raises(ValueError, match="unknown solution format 'essay'"):
        format_solution(solution, "7", "essay")
    # every task's solutions end with their answer phrase, so every format applies to them
    for task in ("arithmetic", "spelling_bee", "spelling", "compare"):
        for p in make_problems(task, "sft", 20):
            assert format_solution(p.solution, p.answer, "think").endswith(f"</think>\nThe answer is {p.answer}.")
