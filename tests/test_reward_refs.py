"""Naming reward functions and loading them by reference (rlpost.scoring.references)."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from rlpost.scoring.references import (
    RewardLoadError,
    absolute_reference,
    accepted_columns,
    call_reward_fn,
    load_reward_fn,
    reward_display_name,
    unique_names,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A user's reward file, written outside the project and loaded by "path.py:function".
USER_REWARDS = textwrap.dedent(
    """
    import asyncio

    NOT_CALLABLE = 3

    def length(prompts, completions, **columns):
        return [float(len(completion)) for completion in completions]

    def exact(prompts, completions, answer):  # no **columns: extra columns are left out
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

    def scaled(prompts, completions, *, scale=1.0, **columns):
        return [scale] * len(completions)

    async def async_length(prompts, completions, **columns):
        await asyncio.sleep(0.01)
        return [float(len(completion)) for completion in completions]

    def one_argument(prompts):
        return []

    def positional_only_extra(prompts, completions, extra, /):
        return []
    """
)


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user_rewards") / "my_rewards.py"
    assert PROJECT_ROOT not in path.parents  # really outside the project
    path.write_text(USER_REWARDS)
    return path


def test_load_builtin_module_and_file_references(user_file):
    from rewards.math import math_reward

    assert load_reward_fn("math") is math_reward
    assert load_reward_fn("rewards.math:math_reward") is math_reward
    assert load_reward_fn("  math ") is math_reward
    length = load_reward_fn(f"{user_file}:length")
    assert length(["p"], ["abc"]) == [3.0]
    assert load_reward_fn(f"{user_file}:length") is length  # one module per file
    bound = load_reward_fn(f"{user_file}:scaled", {"scale": 2.0})
    assert bound(["p"], ["c"]) == [2.0]


def test_relative_file_reference_is_resolved_from_the_working_directory(user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    assert load_reward_fn("./my_rewards.py:length")(["p"], ["ab"]) == [2.0]
    assert absolute_reference("my_rewards.py:length") == f"{user_file}:length"
    assert absolute_reference(" ./my_rewards.py:length ") == f"{user_file}:length"


@pytest.mark.parametrize(
    "reference, message",
    [
        ("no_such_module_xyz:reward", "module 'no_such_module_xyz' not found"),
        ("/nonexistent/folder/rewards.py:reward", "does not exist"),
        ("{user_file}:missing", "has no attribute 'missing'"),
        ("{user_file}:NOT_CALLABLE", "not callable"),
        ("{user_file}:one_argument", "cannot take (prompts, completions, **columns)"),
        ("{user_file}:positional_only_extra", "required positional-only parameters"),
        ("mathh", "not a built-in reward"),
        ("rewards.math:", "expected 'module:function'"),
        ("", "non-empty"),
    ],
)
def test_bad_references_raise_load_error_naming_them(user_file, reference, message):
    reference = reference.format(user_file=user_file)
    with pytest.raises(RewardLoadError) as raised:
        load_reward_fn(reference)
    assert message in str(raised.value)
    assert repr(reference) in str(raised.value) or not reference


def test_file_that_fails_to_import_and_unknown_keyword(tmp_path, user_file):
    broken = tmp_path / "broken.py"
    broken.write_text("def reward(prompts, completions):\n    return [\n")
    with pytest.raises(RewardLoadError, match="SyntaxError"):
        load_reward_fn(f"{broken}:reward")
    with pytest.raises(RewardLoadError, match="no keyword argument"):
        load_reward_fn(f"{user_file}:exact", {"scale": 2.0})


def test_absolute_reference_leaves_builtins_and_modules_alone():
    assert absolute_reference(" math ") == "math"
    assert absolute_reference("rewards.math:math_reward") == "rewards.math:math_reward"
    assert absolute_reference("sub/dir/file.py:reward") == f"{os.getcwd()}/sub/dir/file.py:reward"


def test_display_names_are_short_and_unique():
    assert reward_display_name("rewards.math:math_reward") == "math_reward"
    assert reward_display_name("math") == "math"
    assert unique_names(["math", "a.py:score", "b.py:score", "math", "format"]) == [
        "math",
        "a.py:score",
        "b.py:score",
        "math#2",
        "format",
    ]


def test_column_filtering_by_signature_and_async_calls(user_file):
    exact = load_reward_fn(f"{user_file}:exact")
    assert accepted_columns(exact) == {"answer"}
    assert accepted_columns(load_reward_fn(f"{user_file}:length")) is None
    columns = {"answer": ["a", "b"], "task": ["t", "t"]}
    assert call_reward_fn(exact, ["p", "p"], ["a", "c"], columns, accepted_columns(exact)) == [1.0, 0.0]
    async_length = load_reward_fn(f"{user_file}:async_length")
    assert call_reward_fn(async_length, ["p"], ["abc"], {}, None) == [3.0]


def test_async_reward_runs_when_the_caller_already_runs_an_event_loop(user_file):
    # A notebook (or Playwright's sync API) keeps a loop running; asyncio.run would refuse.
    async_length = load_reward_fn(f"{user_file}:async_length")

    async def caller():
        return call_reward_fn(async_length, ["p", "p"], ["ab", "abcd"], {}, None)

    assert asyncio.run(caller()) == [2.0, 4.0]
