"""RewardWorker: the reward runner as a Ray actor that survives its own death mid-batch."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from user_rewards import reward_children, write_user_rewards

from rlpost.scoring.references import RewardLoadError, RewardSpec
from rlpost.scoring.runner import RewardFunctionBroken, RewardResult, RewardWorker


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    return write_user_rewards(tmp_path_factory.mktemp("user_rewards"))


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
