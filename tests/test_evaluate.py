"""Held-out evaluation's arithmetic (rlpost/evaluate.py) and the verifier step of
rlpost/completions.py, on hand-made completions: no engine, every number computed by hand."""

from __future__ import annotations

from rlpost.completions import Completion, score_completions
from rlpost.distributed.rollout import Sample
from rlpost.evaluate import EvalResult, eval_result, format_table
from rlpost.tasks import Problem


def _completion(text: str, tokens: int, finish_reason: str = "stop", tool_calls: int = 0) -> Completion:
    return Completion(Sample(list(range(tokens)), [0.0] * tokens, finish_reason, tool_calls=tool_calls), text)


PROBLEMS = [
    Problem("arithmetic", "What is 3 + 4?", "", "7"),
    Problem("arithmetic", "What is 2 + 2?", "", "4"),
    Problem("mine", "What is 5 + 7?", "", "12"),  # a user's task: no verifier registered, so math's
]
GROUPS = [
    [_completion("The answer is 7.", 5), _completion("The answer is 8.", 3, "length", tool_calls=1)],
    [_completion("I do not know", 2, "length"), _completion("The answer is 5.", 4)],
    [_completion("The answer is 12.", 6, tool_calls=2), _completion("The answer is 12.", 6)],
]


def test_score_completions_uses_the_task_verifier_and_math_for_unknown_tasks():
    spelling = Problem("spelling", "Spell cat.", "", "c,a,t")
    texts = ["The answer is 7.", "The answer is 5.", "The answer is 12.", "The answer is c,a,t."]
    assert score_completions([PROBLEMS[0], PROBLEMS[1], PROBLEMS[2], spelling], texts) == [1.0, 0.0, 1.0, 1.0]
    assert score_completions([PROBLEMS[2]], ["no number here"]) == [0.0]


def test_eval_result_statistics_by_hand():
    result = eval_result(PROBLEMS, GROUPS)
    # arithmetic: scores 1, 0 | 0, 0 → accuracy 1/4; problem 0 solved, problem 1 not → pass@2 1/2;
    # tokens 5, 3, 2, 4 → 3.5; two of four truncated; one tool call in four samples.
    assert result.per_task["arithmetic"] == {
        "accuracy": 0.25,
        "pass@2": 0.5,
        "mean_tokens": 3.5,
        "truncated": 0.5,
        "tool_calls": 0.25,
        "problems": 2,
    }
    assert result.per_task["mine"] == {
        "accuracy": 1.0,
        "pass@2": 1.0,
        "mean_tokens": 6.0,
        "truncated": 0.0,
        "tool_calls": 1.0,
        "problems": 1,
    }
    assert result.accuracy == {"arithmetic": 0.25, "mine": 1.0}
    # One transcript per problem: its first sample.
    assert [(t["task"], t["completion"], t["correct"]) for t in result.transcripts] == [
        ("arithmetic", "The answer is 7.", 1.0),
        ("arithmetic", "I do not know", 0.0),
        ("mine", "The answer is 12.", 1.0),
    ]
    assert result.transcripts[1] == {
        "task": "arithmetic",
        "prompt": "What is 2 + 2?",
        "answer": "4",
        "completion": "I do not know",
        "correct": 0.0,
    }


def test_one_sample_per_problem_gives_pass_at_1():
    result = eval_result(PROBLEMS[:2], [group[:1] for group in GROUPS[:2]])
    assert result.per_task["arithmetic"]["pass@1"] == result.per_task["arithmetic"]["accuracy"] == 0.5


def test_eval_json_form_round_trips():
    result = eval_result(PROBLEMS, GROUPS)
    saved = result.to_json()
    # eval.json keeps its form: the tasks' statistics under their names, then the transcripts.
    assert list(saved) == ["arithmetic", "mine", "transcripts"]
    assert saved["mine"]["accuracy"] == 1.0 and len(saved["transcripts"]) == 3
    assert EvalResult.from_json(saved) == result


def test_format_table_rows():
    table = format_table(eval_result(PROBLEMS, GROUPS), ("accuracy", "pass@2"))
    assert table.splitlines() == [
        "task              accuracy      pass@2",
        "arithmetic           0.250       0.500",
        "mine                 1.000       1.000",
    ]
    # A column a task lacks shows as nan rather than failing the whole table.
    assert format_table(eval_result(PROBLEMS, GROUPS), ("missing",)).splitlines()[1] == "arithmetic             nan"
