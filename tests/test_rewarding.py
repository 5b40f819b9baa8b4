"""Loading reward functions by reference and running them robustly (rlpost.rewarding)."""

from __future__ import annotations

import pickle
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from rlpost.rewarding import (
    RewardComputer,
    RewardFunctionBroken,
    RewardLoadError,
    RewardResult,
    RewardSpec,
    RewardWorker,
    load_reward_fn,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A user's reward file, written outside the project and loaded by "path.py:function".
USER_REWARDS = textwrap.dedent(
    """
    import asyncio
    import math
    import os
    import signal
    import time

    from rewards import per_sample

    NOT_CALLABLE = 3

    def length(prompts, completions, **columns):
        return [float(len(completion)) for completion in completions]

    def exact(prompts, completions, answer):  # no **columns: extra columns are left out
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

    def fails_on_bad(prompts, completions, **columns):
        for completion in completions:
            if "bad" in completion:
                raise ZeroDivisionError("bad sample")
        return [1.0] * len(completions)

    def always_fails(prompts, completions, **columns):
        raise RuntimeError("reward server unreachable")

    def fails_when_told(prompts, completions, fail, **columns):
        if any(fail):
            raise RuntimeError("told to fail")
        return [1.0] * len(completions)

    def hangs_on_hang(prompts, completions, **columns):
        if any("hang" in completion for completion in completions):
            time.sleep(600)
        return [2.0] * len(completions)

    def batch_fails_then_sample_hangs(prompts, completions, **columns):
        if len(completions) > 1:
            raise ValueError("batch too big")
        if completions[0] == "hang":
            time.sleep(600)
        return [1.0]

    def non_finite(prompts, completions, **columns):
        return [float("nan"), float("inf"), 1.0, 10**400]

    def too_short(prompts, completions, **columns):
        return [1.0]

    def not_a_list(prompts, completions, **columns):
        return 1.0

    def mixed_types(prompts, completions, **columns):
        return ["1.0", None, True, 0.5]

    def crashes(prompts, completions, **columns):
        os._exit(3)

    def none_on_odd(prompts, completions, **columns):
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    async def async_length(prompts, completions, **columns):
        await asyncio.sleep(0.01)
        return [float(len(completion)) for completion in completions]

    @per_sample
    def per_sample_exact(prompt, completion, answer=None, **columns):
        return 1.0 if completion == answer else 0.0

    def scaled(prompts, completions, *, scale=1.0, **columns):
        return [scale] * len(completions)

    def kill_worker_once(prompts, completions, *, marker, **columns):
        # Kills the process that runs the reward (a Ray actor) the first time only.
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(30)
        return [1.0] * len(completions)

    def one_argument(prompts):
        return []
    """
)


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user_rewards") / "my_rewards.py"
    assert PROJECT_ROOT not in path.parents  # really outside the project
    path.write_text(USER_REWARDS)
    return path


@pytest.fixture
def make_computer(user_file):
    """Builds RewardComputers over functions of the user file and closes them after the test."""
    computers = []

    def make(*functions, default_reward=None, max_consecutive_failed_steps=3, timeout_s=10.0, **spec_fields):
        specs = [
            RewardSpec(name=f"{user_file}:{function}", timeout_s=timeout_s, **spec_fields) for function in functions
        ]
        computer = RewardComputer(specs, default_reward, max_consecutive_failed_steps)
        computers.append(computer)
        return computer

    yield make
    for computer in computers:
        computer.close()


# ---------------------------------------------------------------------------- loading


def test_load_builtin_module_and_file_references(user_file):
    from rewards.math import math_reward

    assert load_reward_fn("math") is math_reward
    assert load_reward_fn("rewards.math:math_reward") is math_reward
    length = load_reward_fn(f"{user_file}:length")
    assert length(["p"], ["abc"]) == [3.0]
    bound = load_reward_fn(f"{user_file}:scaled", {"scale": 2.0})
    assert bound(["p"], ["c"]) == [2.0]


@pytest.mark.parametrize(
    "reference, message",
    [
        ("no_such_module_xyz:reward", "module 'no_such_module_xyz' not found"),
        ("/nonexistent/folder/rewards.py:reward", "does not exist"),
        ("{user_file}:missing", "has no attribute 'missing'"),
        ("{user_file}:NOT_CALLABLE", "not callable"),
        ("{user_file}:one_argument", "cannot take (prompts, completions, **columns)"),
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


def test_computer_checks_references_at_start(user_file):
    with pytest.raises(RewardLoadError, match="has no attribute"):
        RewardComputer([RewardSpec(f"{user_file}:missing")])


# ---------------------------------------------------------------------------- running


def test_per_function_values_weights_and_column_filtering(make_computer, user_file):
    computer = RewardComputer(
        [
            RewardSpec(f"{user_file}:length", weight=0.5),
            RewardSpec(f"{user_file}:exact", weight=2.0),
        ]
    )
    try:
        result = computer(["p", "p"], ["ab", "xyz"], {"answer": ["ab", "no"], "unused": [1, 2]})
    finally:
        computer.close()
    assert result.per_fn == {"length": [2.0, 3.0], "exact": [1.0, 0.0]}
    assert result.total == [0.5 * 2 + 2.0 * 1, 0.5 * 3 + 0.0]
    assert result.failures == {"length": 0, "exact": 0}
    assert result.errors == []
    metrics = result.metrics()
    assert metrics["reward/length/mean"] == 2.5
    assert metrics["reward/exact/failures"] == 0.0
    assert pickle.loads(pickle.dumps(result)) == result


def test_none_means_no_opinion_and_default_reward(make_computer):
    both = make_computer("none_on_odd", "none_on_odd")
    result = both(["p"] * 3, ["a", "b", "c"])
    assert list(result.per_fn) == ["none_on_odd", "none_on_odd#2"]
    assert result.total == [2.0, None, 2.0]
    assert result.failures == {"none_on_odd": 0, "none_on_odd#2": 0}
    with_default = make_computer("none_on_odd", default_reward=-1.0)
    assert with_default(["p"] * 2, ["a", "b"]).total == [1.0, -1.0]


def test_async_and_per_sample_functions(make_computer):
    computer = make_computer("async_length", "per_sample_exact")
    result = computer(["p", "p"], ["abc", "z"], {"answer": ["abc", "y"]})
    assert result.per_fn == {"async_length": [3.0, 1.0], "per_sample_exact": [1.0, 0.0]}


def test_exception_falls_back_to_samples_one_by_one(make_computer):
    computer = make_computer("fails_on_bad")
    result = computer(["p"] * 4, ["ok", "bad", "fine", "bad too"])
    assert result.per_fn["fails_on_bad"] == [1.0, None, 1.0, None]
    assert result.failures["fails_on_bad"] == 2
    # The first traceback of the kind, with the function's name and the sample index.
    assert len(result.errors) == 1
    assert result.errors[0].startswith("[fails_on_bad] ZeroDivisionError at sample 1:")
    assert "bad sample" in result.errors[0]


def test_hanging_call_is_killed_near_its_timeout_and_the_process_restarts(make_computer):
    computer = make_computer("hangs_on_hang", timeout_s=1.0)
    started = time.monotonic()
    result = computer(["p"] * 2, ["fine", "hang"])
    elapsed = time.monotonic() - started
    assert elapsed < 4.0
    assert result.per_fn["hangs_on_hang"] == [None, None]
    assert result.failures["hangs_on_hang"] == 2
    assert "timeout" in result.errors[0] and "whole batch" in result.errors[0]
    # The next batch runs in a fresh process.
    assert computer(["p"], ["fine"]).per_fn["hangs_on_hang"] == [2.0]


def test_hang_during_the_per_sample_retry_keeps_the_samples_scored_before_it(make_computer):
    computer = make_computer("batch_fails_then_sample_hangs", timeout_s=1.0)
    started = time.monotonic()
    result = computer(["p"] * 3, ["a", "hang", "b"])
    assert time.monotonic() - started < 5.0
    assert result.per_fn["batch_fails_then_sample_hangs"] == [1.0, None, None]
    assert result.failures["batch_fails_then_sample_hangs"] == 2
    assert result.errors[0].startswith("[batch_fails_then_sample_hangs] timeout at sample 1:")
    assert result.errors[1].startswith("[batch_fails_then_sample_hangs] ValueError on the whole batch:")


def test_non_finite_values_fail_only_their_samples(make_computer):
    result = make_computer("non_finite")(["p"] * 4, ["a", "b", "c", "d"])
    assert result.per_fn["non_finite"] == [None, None, 1.0, None]
    assert result.failures["non_finite"] == 3
    assert result.errors == ["[non_finite] non-finite at sample 0: returned nan"]


def test_wrong_length_and_wrong_types(make_computer):
    computer = make_computer("too_short", "not_a_list", "mixed_types")
    result = computer(["p"] * 4, ["a", "b", "c", "d"])
    assert result.per_fn["too_short"] == [None] * 4
    assert result.per_fn["not_a_list"] == [None] * 4
    assert result.per_fn["mixed_types"] == [None, None, 1.0, 0.5]
    assert result.failures == {"too_short": 4, "not_a_list": 4, "mixed_types": 1}
    joined = "\n".join(result.errors)
    assert "[too_short] wrong-length on the whole batch: returned 1 values for 4 samples" in joined
    assert "[not_a_list] wrong-type on the whole batch: returned float" in joined
    assert "[mixed_types] wrong-type at sample 0: returned str '1.0'" in joined
    assert result.total == [None, None, 1.0, 0.5]


def test_crashing_process_is_counted_and_restarted(make_computer):
    computer = make_computer("crashes", "length")
    for _ in range(2):
        result = computer(["p"] * 2, ["a", "bb"])
        assert result.per_fn["crashes"] == [None, None]
        assert result.per_fn["length"] == [1.0, 2.0]
        assert result.failures["crashes"] == 2
        assert "exit code 3" in result.errors[0]


def test_failing_every_sample_for_n_steps_raises_broken(make_computer):
    computer = make_computer("always_fails", "length", max_consecutive_failed_steps=3)
    for _ in range(2):
        result = computer(["p"] * 2, ["a", "b"])
        assert result.failures["always_fails"] == 2
        assert result.total == [1.0, 1.0]  # the other function still counts
    with pytest.raises(RewardFunctionBroken) as raised:
        computer(["p"] * 2, ["a", "b"])
    assert raised.value.function_name == "always_fails"
    assert "reward server unreachable" in str(raised.value)
    assert "3 consecutive steps" in str(raised.value)
    assert pickle.loads(pickle.dumps(raised.value)).function_name == "always_fails"


def test_a_good_step_resets_the_failure_count(make_computer):
    computer = make_computer("fails_when_told", max_consecutive_failed_steps=2)
    computer(["p"], ["a"], {"fail": [True]})
    computer(["p"], ["a"], {"fail": [False]})
    computer(["p"], ["a"], {"fail": [True]})
    with pytest.raises(RewardFunctionBroken):
        computer(["p"], ["a"], {"fail": [True]})


def test_builtin_rewards_run_in_processes():
    computer = RewardComputer(
        [
            {"name": "math"},
            {"name": "format", "weight": 0.5},
            {"name": "overlong", "kwargs": {"max_length": 40}},
        ]
    )
    try:
        result = computer(
            ["q"] * 2,
            [r"The answer is $\frac{1}{2}$.", "Hmm " * 20 + "I got 0.4"],
            {"answer": ["0.5", "0.5"]},
        )
    finally:
        computer.close()
    assert result.per_fn == {"math": [1.0, 0.0], "format": [1.0, 0.0], "overlong": [0.0, -1.0]}
    assert result.total == [1.5, -1.0]


def test_inputs_are_checked():
    computer = RewardComputer([RewardSpec("length", kwargs={"max_length": 10})])
    try:
        with pytest.raises(ValueError, match="completions"):
            computer(["p"], [])
        with pytest.raises(ValueError, match="column 'answer'"):
            computer(["p"], ["c"], {"answer": []})
        empty = computer([], [])
        assert empty.total == [] and empty.per_fn == {"length": []}
    finally:
        computer.close()


# ---------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="rlpost-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_reward_worker_actor_scores(local_ray, user_file):
    from rlpost.rewarding import RewardWorkerActor

    worker = RewardWorkerActor.options(num_cpus=0).remote([RewardSpec(f"{user_file}:length"), RewardSpec("math")])
    result = local_ray.get(worker.score.remote(["q"], ["The answer is 4"], {"answer": ["4"]}), timeout=120)
    assert isinstance(result, RewardResult)
    assert result.per_fn == {"length": [15.0], "math": [1.0]}
    local_ray.get(worker.close.remote())
    local_ray.kill(worker)


def test_reward_worker_killed_mid_batch_is_restarted_and_the_batch_retried(local_ray, user_file, tmp_path):
    from rlpost.rewarding import RewardWorkerActor

    marker = tmp_path / "killed-once"
    worker = RewardWorkerActor.options(num_cpus=0).remote(
        [RewardSpec(f"{user_file}:kill_worker_once", kwargs={"marker": str(marker)})]
    )
    result = local_ray.get(worker.score.remote(["q"] * 3, ["a", "b", "c"]), timeout=120)
    assert marker.exists()  # the first attempt killed the worker
    assert result.per_fn == {"kill_worker_once": [1.0, 1.0, 1.0]}
    assert result.failures == {"kill_worker_once": 0}
    local_ray.kill(worker)


def test_reward_worker_reports_a_broken_function(local_ray, user_file):
    from rlpost.rewarding import RewardWorkerActor

    worker = RewardWorkerActor.options(num_cpus=0).remote([RewardSpec(f"{user_file}:always_fails")], None, 1)
    with pytest.raises(RewardFunctionBroken, match="always_fails"):
        local_ray.get(worker.score.remote(["q"], ["a"]), timeout=120)
    local_ray.kill(worker)


def test_reward_worker_plain_class_works_without_ray(user_file):
    worker = RewardWorker([RewardSpec(f"{user_file}:length")])
    try:
        assert worker.score(["p"], ["abcd"]).total == [4.0]
        assert worker.names() == ["length"]
    finally:
        worker.close()
