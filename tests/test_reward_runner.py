"""Running reward functions in supervised child processes and combining them (rlpost.scoring.runner)."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from rlpost.scoring.references import RewardLoadError, RewardSpec
from rlpost.scoring.runner import RewardError, RewardFunctionBroken, RewardResult, RewardRunner, RewardWorker

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A user's reward file, written outside the project and loaded by "path.py:function".
USER_REWARDS = textwrap.dedent(
    """
    import asyncio
    import os
    import signal
    import time

    from rewards import per_sample

    def length(prompts, completions, **columns): return [float(len(c)) for c in completions]
    def exact(prompts, completions, answer):  # no **columns: extra columns are left out
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

    def fails_on_bad(prompts, completions, **columns):
        for completion in completions:
            if "bad" in completion:
                raise ZeroDivisionError("bad sample")
        return [1.0] * len(completions)

    def always_fails(prompts, completions, **columns): raise RuntimeError("reward server unreachable")

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

    # Broken results, one line each.
    def non_finite(prompts, completions, **columns): return [float("nan"), float("inf"), 1.0, 10**400]
    def too_short(prompts, completions, **columns): return [1.0]
    def not_a_list(prompts, completions, **columns): return 1.0
    def mixed_types(prompts, completions, **columns): return ["1.0", None, True, 0.5]
    def crashes(prompts, completions, **columns): os._exit(3)
    def none_on_odd(prompts, completions, **columns): return [None if i % 2 else 1.0 for i in range(len(completions))]

    async def async_length(prompts, completions, **columns):
        await asyncio.sleep(0.01)
        return [float(len(completion)) for completion in completions]

    @per_sample
    def per_sample_exact(prompt, completion, answer=None, **columns):
        return 1.0 if completion == answer else 0.0

    def kill_worker_once(prompts, completions, *, marker, **columns):
        # Kills the process that runs the reward (a Ray actor) the first time only.
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(30)
        return [1.0] * len(completions)
    """
)


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user_rewards") / "my_rewards.py"
    assert PROJECT_ROOT not in path.parents  # really outside the project
    path.write_text(USER_REWARDS)
    return path


@pytest.fixture
def make_runner(user_file):
    """Builds started RewardRunners over functions of the user file and closes them after the test."""
    runners = []

    def make(*functions, default_reward=None, max_consecutive_failed_steps=3, timeout_s=10.0, **spec_fields):
        specs = [
            RewardSpec(name=f"{user_file}:{function}", timeout_s=timeout_s, **spec_fields) for function in functions
        ]
        runner = RewardRunner(specs, default_reward, max_consecutive_failed_steps=max_consecutive_failed_steps)
        runners.append(runner)
        runner.start()
        return runner

    yield make
    for runner in runners:
        runner.close()


def reward_children() -> set[int]:
    """Process ids of the reward child processes this test process started."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == os.getpid() and b"rlpost.scoring.process" in command:
            children.add(int(entry.name))
    return children


# ---------------------------------------------------------------------------- start-up


def test_runner_start_raises_the_childs_load_error(user_file):
    runner = RewardRunner([RewardSpec("math"), RewardSpec(f"{user_file}:missing")])
    with pytest.raises(RewardLoadError) as raised:
        runner.start()
    assert f"{user_file}:missing" in str(raised.value)
    assert "has no attribute 'missing'" in str(raised.value)
    assert not reward_children()  # the children that did load were stopped too
    runner.close()


def test_the_runner_process_does_not_import_reward_functions(tmp_path):
    marker = tmp_path / "imports.txt"
    counted = tmp_path / "counted_reward.py"
    # Importing the file appends the importing process's id to the marker.
    counted.write_text(
        f"import os\nopen({str(marker)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "def reward(prompts, completions, **columns): return [1.0] * len(completions)\n"
    )
    with RewardRunner([RewardSpec(f"{counted}:reward")]) as runner:
        assert runner.score(["p"], ["c"]).total == [1.0]
    importers = marker.read_text().split()
    assert len(importers) == 1
    assert int(importers[0]) != os.getpid()
    assert not [module for module in list(sys.modules.values()) if getattr(module, "__file__", None) == str(counted)]


# ---------------------------------------------------------------------------- running


def test_per_function_values_weights_and_column_filtering(user_file):
    specs = [RewardSpec(f"{user_file}:length", weight=0.5), RewardSpec(f"{user_file}:exact", weight=2.0)]
    with RewardRunner(specs) as runner:
        result = runner.score(["p", "p"], ["ab", "xyz"], {"answer": ["ab", "no"], "unused": [1, 2]})
    assert result.per_fn == {"length": [2.0, 3.0], "exact": [1.0, 0.0]}
    assert result.total == [0.5 * 2 + 2.0 * 1, 0.5 * 3 + 0.0]
    assert result.failures == {"length": 0, "exact": 0}
    assert result.errors == []
    assert result.accuracy == [None, None]
    assert result.duration_s > 0
    assert pickle.loads(pickle.dumps(result)) == result


def test_none_means_no_opinion_and_default_reward(make_runner):
    both = make_runner("none_on_odd", "none_on_odd")
    result = both.score(["p"] * 3, ["a", "b", "c"])
    assert list(result.per_fn) == ["none_on_odd", "none_on_odd#2"]
    assert result.total == [2.0, None, 2.0]
    assert result.failures == {"none_on_odd": 0, "none_on_odd#2": 0}
    with_default = make_runner("none_on_odd", default_reward=-1.0)
    assert with_default.score(["p"] * 2, ["a", "b"]).total == [1.0, -1.0]


def test_a_weight_0_function_is_reported_but_never_makes_a_total(user_file):
    # Sample 1: only the weight-0 function gave a value (a monitor's judge runs like this).
    specs = [RewardSpec(f"{user_file}:none_on_odd"), RewardSpec(f"{user_file}:length", weight=0.0)]
    with RewardRunner(specs) as runner:
        result = runner.score(["p", "p"], ["ab", "xyz"])
        assert result.per_fn == {"none_on_odd": [1.0, None], "length": [2.0, 3.0]}
        assert result.total == [1.0, None]
    with RewardRunner(specs, default_reward=-1.0) as runner:
        assert runner.score(["p", "p"], ["ab", "xyz"]).total == [1.0, -1.0]


def test_async_and_per_sample_functions(make_runner):
    runner = make_runner("async_length", "per_sample_exact")
    result = runner.score(["p", "p"], ["abc", "z"], {"answer": ["abc", "y"]})
    assert result.per_fn == {"async_length": [3.0, 1.0], "per_sample_exact": [1.0, 0.0]}


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


def test_builtin_rewards_run_in_processes():
    specs = [{"name": "math"}, {"name": "format", "weight": 0.5}, {"name": "overlong", "kwargs": {"max_length": 40}}]
    with RewardRunner(specs) as runner:
        result = runner.score(
            ["q"] * 2,
            [r"The answer is $\frac{1}{2}$.", "Hmm " * 20 + "I got 0.4"],
            {"answer": ["0.5", "0.5"]},
        )
    assert result.per_fn == {"math": [1.0, 0.0], "format": [1.0, 0.0], "overlong": [0.0, -1.0]}
    assert result.total == [1.5, -1.0]


def test_inputs_are_checked():
    with RewardRunner([RewardSpec("length", kwargs={"max_length": 10})]) as runner:
        with pytest.raises(ValueError, match="completions"):
            runner.score(["p"], [])
        with pytest.raises(ValueError, match="column 'answer'"):
            runner.score(["p"], ["c"], {"answer": []})
        empty = runner.score([], [])
        assert empty.total == [] and empty.per_fn == {"length": []} and empty.accuracy == []
    with pytest.raises(ValueError, match="timeout_s"):
        RewardRunner([RewardSpec("length", timeout_s=0)])


def test_a_runner_starts_on_its_first_batch_and_closes_its_children(user_file):
    runner = RewardRunner([RewardSpec(f"{user_file}:length")])
    assert not reward_children()
    assert runner.score(["p"], ["abc"]).total == [3.0]
    assert len(reward_children()) == 1
    runner.close()
    assert not reward_children()


# ---------------------------------------------------------------------------- verifiers


def test_accuracy_comes_from_each_tasks_verifier_and_a_spec_verifier_is_reused(user_file):
    specs = [RewardSpec("math"), RewardSpec(f"{user_file}:length", weight=0.0)]
    completions = ["The answer is 4", "The answer is 5", "There are 3 r's", "The answer is 4"]
    columns = {"answer": ["4", "4", "3", "4"], "task": ["arithmetic", "arithmetic", "letters", "chat"]}
    verifiers = {"arithmetic": "math", "letters": "letter_count"}
    with RewardRunner(specs, verifiers=verifiers) as runner:
        # "math" reuses the spec's child; "letter_count" gets its own.
        assert len(reward_children()) == 3
        result = runner.score(["q"] * 4, completions, columns)
    assert result.accuracy == [1.0, 0.0, 1.0, None]
    assert list(result.per_fn) == ["math", "length"]  # a separate verifier is not a reward
    assert result.total == [1.0, 0.0, 1.0, 1.0]
    assert result.errors == []

    with RewardRunner(specs, verifiers={"arithmetic": " math "}) as runner:
        assert len(reward_children()) == len(specs)
        assert runner.score(["q"] * 4, completions, columns).accuracy == [1.0, 0.0, None, None]
    with pytest.raises(ValueError, match="'task' column"):
        RewardRunner(specs, verifiers=verifiers).score(["q"], ["a"], {"answer": ["1"]})


def test_a_separate_verifier_sees_only_its_tasks_and_never_breaks_the_run(user_file):
    verifiers = {"checked": f"{user_file}:fails_on_bad", "down": f"{user_file}:always_fails"}
    with RewardRunner(
        [RewardSpec(f"{user_file}:length")], verifiers=verifiers, max_consecutive_failed_steps=1
    ) as runner:
        for _ in range(3):
            result = runner.score(
                ["p"] * 4, ["bad", "ok", "bad", "x"], {"task": ["other", "checked", "checked", "down"]}
            )
            assert result.per_fn == {"length": [3.0, 2.0, 3.0, 1.0]}
            assert result.failures == {"length": 0}
            assert result.accuracy == [None, 1.0, None, None]
    failed_at = {(error.function, error.kind, error.index) for error in result.errors}
    assert failed_at == {
        (f"verifier:{user_file}:fails_on_bad", "ZeroDivisionError", 2),  # sample 2 of the batch, 1 of the verifier's
        (f"verifier:{user_file}:always_fails", "RuntimeError", 3),
    }


def test_a_bad_verifier_reference_fails_at_start():
    with pytest.raises(RewardLoadError, match="not a built-in reward"):
        RewardRunner([RewardSpec("format")], verifiers={"arithmetic": "mathh"}).start()


# ---------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="rlpost-ray-")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def reward_worker_actor(ray, *arguments):
    return ray.remote(RewardWorker).options(**RewardWorker.RAY_OPTIONS, num_cpus=0).remote(*arguments)


def test_reward_worker_actor_scores(local_ray, user_file):
    worker = reward_worker_actor(
        local_ray, [RewardSpec(f"{user_file}:length"), RewardSpec("math")], None, {"arithmetic": "math"}
    )
    assert local_ray.get(worker.start.remote(), timeout=120) == ["length", "math"]
    result = local_ray.get(
        worker.score.remote(["q"], ["The answer is 4"], {"answer": ["4"], "task": ["arithmetic"]}), timeout=120
    )
    assert isinstance(result, RewardResult)
    assert result.per_fn == {"length": [15.0], "math": [1.0]}
    assert result.accuracy == [1.0]
    local_ray.get(worker.close.remote())
    local_ray.kill(worker)


def test_reward_worker_start_raises_load_error_naming_the_reference(local_ray, user_file):
    worker = reward_worker_actor(local_ray, [RewardSpec(f"{user_file}:missing")])
    for _ in range(2):  # the actor survives the error
        with pytest.raises(RewardLoadError) as raised:
            local_ray.get(worker.start.remote(), timeout=120)
        assert f"{user_file}:missing" in str(raised.value)
        assert "has no attribute 'missing'" in str(raised.value)
    local_ray.kill(worker)


def test_reward_worker_killed_mid_batch_is_restarted_and_the_batch_retried(local_ray, user_file, tmp_path):
    marker = tmp_path / "killed-once"
    worker = reward_worker_actor(
        local_ray, [RewardSpec(f"{user_file}:kill_worker_once", kwargs={"marker": str(marker)})]
    )
    local_ray.get(worker.start.remote(), timeout=120)
    result = local_ray.get(worker.score.remote(["q"] * 3, ["a", "b", "c"]), timeout=120)
    assert marker.exists()  # the first attempt killed the worker
    assert result.per_fn == {"kill_worker_once": [1.0, 1.0, 1.0]}
    assert result.failures == {"kill_worker_once": 0}
    local_ray.kill(worker)


def test_reward_worker_reports_a_broken_function(local_ray, user_file):
    worker = reward_worker_actor(local_ray, [RewardSpec(f"{user_file}:always_fails")], None, None, 1)
    with pytest.raises(RewardFunctionBroken, match="always_fails") as raised:
        local_ray.get(worker.score.remote(["q"], ["a"]), timeout=120)
    assert raised.value.last_error.kind == "RuntimeError"
    local_ray.kill(worker)


def test_reward_worker_plain_class_works_without_ray(user_file):
    worker = RewardWorker([RewardSpec(f"{user_file}:length")])
    assert not reward_children()  # nothing starts in the constructor
    try:
        assert worker.start() == ["length"]
        assert worker.score(["p"], ["abcd"]).total == [4.0]
    finally:
        worker.close()
    assert not reward_children()
