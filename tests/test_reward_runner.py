"""Running reward functions in supervised child processes and combining them (rlpost.scoring.runner).

Failures of the functions are in test_reward_failures.py, the Ray actor in test_reward_worker.py."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
from user_rewards import reward_children, runner_factory, write_user_rewards

from rlpost.scoring.references import RewardLoadError, RewardSpec
from rlpost.scoring.runner import RewardRunner


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    return write_user_rewards(tmp_path_factory.mktemp("user_rewards"))


@pytest.fixture
def make_runner(user_file):
    with runner_factory(user_file) as make:
        yield make


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


def test_a_dict_result_logs_its_series_beside_the_reward_and_never_adds_them(user_file):
    specs = [RewardSpec(f"{user_file}:with_members"), RewardSpec(f"{user_file}:length")]
    with RewardRunner(specs) as runner:
        result = runner.score(["p", "p"], ["ab", "xyz"])
    # "bad" is not a list of 2 numbers: dropped (all None), the reward itself kept.
    assert result.per_fn == {
        "with_members": [1.0, 1.0],
        "length": [2.0, 3.0],
        "with_members/member_0": [0.5, 0.5],
        "with_members/bad": [None, None],
    }
    assert result.total == [1.0 + 2.0, 1.0 + 3.0]
    assert result.failures == {"with_members": 0, "length": 0}


def test_a_reward_model_ensemble_pays_mean_minus_lambda_std():
    from rewards.reward_model import ensemble_reward

    combined, spread = ensemble_reward([[1.0, 0.0], [3.0, 0.0]], penalty=0.5)
    # Sample 0: mean 2, population std 1 → 2 - 0.5; sample 1: the members agree.
    assert combined == [1.5, 0.0] and spread == [1.0, 0.0]
    assert ensemble_reward([[2.0], [2.0], [2.0]], penalty=3.0) == ([2.0], [0.0])
