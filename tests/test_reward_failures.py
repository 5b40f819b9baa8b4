"""Reward functions that raise, hang, crash or return bad values never stop a run: each failure is
recorded per sample, and a function failing every sample for N steps raises RewardFunctionBroken."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
from user_rewards import runner_factory, write_user_rewards

from rlpost.scoring.runner import RewardError, RewardFunctionBroken


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    return write_user_rewards(tmp_path_factory.mktemp("user_rewards"))


@pytest.fixture
def make_runner(user_file):
    with runner_factory(user_file) as make:
        yield make


def test_exception_falls_back_to_samples_one_by_one(make_runner):
    runner = make_runner("fails_on_bad")
    result = runner.score(["p"] * 4, ["ok", "bad", "fine", "bad too"])
    assert result.per_fn["fails_on_bad"] == [1.0, None, 1.0, None]
    assert result.failures["fails_on_bad"] == 2
    # The first traceback of the kind, with the function's name and the sample index.
    assert len(result.errors) == 1
    error = result.errors[0]
    assert (error.function, error.kind, error.index) == ("fails_on_bad", "ZeroDivisionError", 1)
    assert "bad sample" in error.message
    assert str(error).startswith("[fails_on_bad] ZeroDivisionError at sample 1: Traceback")


def test_error_records_of_raising_non_finite_and_wrong_length_functions(make_runner):
    runner = make_runner("always_fails", "non_finite", "too_short")
    result = runner.score(["p"] * 4, ["a", "b", "c", "d"])
    kinds = [(error.function, error.kind, error.index) for error in result.errors]
    # One record per kind and function: the per-sample retry of always_fails fails
    # the same way as the batch, so only its first sample is reported.
    assert kinds == [
        ("always_fails", "RuntimeError", 0),
        ("non_finite", "non-finite", 0),
        ("too_short", "wrong-length", None),
    ]
    assert "reward server unreachable" in result.errors[0].message
    assert str(result.errors[1]) == "[non_finite] non-finite at sample 0: returned nan"
    assert str(result.errors[2]) == "[too_short] wrong-length on the whole batch: returned 1 values for 4 samples"
    assert all(isinstance(error, RewardError) for error in result.errors)
    assert pickle.loads(pickle.dumps(result.errors)) == result.errors


def test_hanging_call_is_killed_near_its_timeout_and_the_process_restarts(make_runner):
    runner = make_runner("hangs_on_hang", timeout_s=1.0)
    started = time.monotonic()
    result = runner.score(["p"] * 2, ["fine", "hang"])
    elapsed = time.monotonic() - started
    assert elapsed < 4.0
    assert result.per_fn["hangs_on_hang"] == [None, None]
    assert result.failures["hangs_on_hang"] == 2
    assert (result.errors[0].kind, result.errors[0].index) == ("timeout", None)
    assert "whole batch" in str(result.errors[0])
    # The next batch runs in a fresh process.
    assert runner.score(["p"], ["fine"]).per_fn["hangs_on_hang"] == [2.0]


def test_hang_during_the_per_sample_retry_keeps_the_samples_scored_before_it(make_runner):
    runner = make_runner("batch_fails_then_sample_hangs", timeout_s=1.0)
    started = time.monotonic()
    result = runner.score(["p"] * 3, ["a", "hang", "b"])
    assert time.monotonic() - started < 5.0
    assert result.per_fn["batch_fails_then_sample_hangs"] == [1.0, None, None]
    assert result.failures["batch_fails_then_sample_hangs"] == 2
    assert str(result.errors[0]).startswith("[batch_fails_then_sample_hangs] timeout at sample 1:")
    assert str(result.errors[1]).startswith("[batch_fails_then_sample_hangs] ValueError on the whole batch:")


def test_non_finite_values_fail_only_their_samples(make_runner):
    result = make_runner("non_finite").score(["p"] * 4, ["a", "b", "c", "d"])
    assert result.per_fn["non_finite"] == [None, None, 1.0, None]
    assert result.failures["non_finite"] == 3
    assert result.errors == [RewardError("non_finite", "non-finite", 0, "returned nan")]


def test_wrong_length_and_wrong_types(make_runner):
    runner = make_runner("too_short", "not_a_list", "mixed_types")
    result = runner.score(["p"] * 4, ["a", "b", "c", "d"])
    assert result.per_fn["too_short"] == [None] * 4
    assert result.per_fn["not_a_list"] == [None] * 4
    assert result.per_fn["mixed_types"] == [None, None, 1.0, 0.5]
    assert result.failures == {"too_short": 4, "not_a_list": 4, "mixed_types": 1}
    assert result.errors == [
        RewardError("too_short", "wrong-length", None, "returned 1 values for 4 samples"),
        RewardError("not_a_list", "wrong-type", None, "returned float, expected a list of 4 floats or None"),
        RewardError("mixed_types", "wrong-type", 0, "returned str '1.0'"),
    ]
    assert result.total == [None, None, 1.0, 0.5]


def test_crashing_process_is_counted_and_restarted(make_runner):
    runner = make_runner("crashes", "length")
    for _ in range(2):
        result = runner.score(["p"] * 2, ["a", "bb"])
        assert result.per_fn["crashes"] == [None, None]
        assert result.per_fn["length"] == [1.0, 2.0]
        assert result.failures["crashes"] == 2
        assert result.errors[0].kind == "crash"
        assert "exit code 3" in result.errors[0].message


def test_failing_every_sample_for_n_steps_raises_broken(make_runner):
    runner = make_runner("always_fails", "length", max_consecutive_failed_steps=3)
    for _ in range(2):
        result = runner.score(["p"] * 2, ["a", "b"])
        assert result.failures["always_fails"] == 2
        assert result.total == [1.0, 1.0]  # the other function still counts
    with pytest.raises(RewardFunctionBroken) as raised:
        runner.score(["p"] * 2, ["a", "b"])
    assert raised.value.function_name == "always_fails"
    assert isinstance(raised.value.last_error, RewardError)
    assert raised.value.last_error.function == "always_fails"
    assert "reward server unreachable" in str(raised.value)
    assert "3 consecutive steps" in str(raised.value)
    unpickled = pickle.loads(pickle.dumps(raised.value))
    assert unpickled.function_name == "always_fails"
    assert unpickled.last_error == raised.value.last_error


def test_a_good_step_resets_the_failure_count(make_runner):
    runner = make_runner("fails_when_told", max_consecutive_failed_steps=2)
    runner.score(["p"], ["a"], {"fail": [True]})
    runner.score(["p"], ["a"], {"fail": [False]})
    runner.score(["p"], ["a"], {"fail": [True]})
    with pytest.raises(RewardFunctionBroken):
        runner.score(["p"], ["a"], {"fail": [True]})
