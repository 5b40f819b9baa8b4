"""The RL step's pure pieces: prompt order, merging refill rounds, advantages per token, metrics."""

import math

import pytest

from rlpost.config import ConfigError, load_config, load_recipe
from rlpost.distributed.rollout import Sample
from rlpost.rl.config import RolloutConfig
from rlpost.rl.steps import StepSamples, problems_at, step_metrics
from rlpost.tasks import Problem

GRPO = load_recipe("grpo")  # GRPO's advantages live in its recipe
GRPOAlgoConfig, build_trajectories = GRPO.GRPOAlgoConfig, GRPO.build_trajectories
ROLLOUT = RolloutConfig(n=2, prompts_per_step=2, max_new_tokens=4)


def _groups(rewards, samples=None, accuracy=None):
    # Two samples per prompt; by default the second sample of group 0 hits the length limit.
    samples = samples or [
        Sample([5, 6], [-0.1, -0.2], "stop"),
        Sample([5, 6, 7, 8], [-0.1] * 4, "length"),
        Sample([9], [-0.3], "stop"),
        Sample([9, 9], [-0.3, -0.4], "stop"),
    ]
    problems = [Problem("arithmetic", f"q{i}", "", "1") for i in range(len(samples) // 2)]
    return StepSamples(
        problems=problems,
        prompt_ids=[[1, 2 + i] for i in range(len(problems))],
        samples=samples,
        total_rewards=rewards,
        accuracy=accuracy or [None] * len(samples),
        per_fn={"math": list(rewards)},
        failures={"math": 0},
    )


def test_group_advantages_broadcast_over_every_token_and_zero_variance_drop():
    trajs, groups_trained = build_trajectories(_groups([1.0, 0.0, 0.5, 0.5]), GRPOAlgoConfig(), ROLLOUT)
    # Group 0: rewards 1, 0 → GRPO advantages +1, -1 (population std 0.5); group 1 has no spread.
    assert trajs[0].advantages == pytest.approx([1.0, 1.0], abs=1e-4)
    assert trajs[1].advantages == pytest.approx([-1.0] * 4, abs=1e-4)
    assert [t.prompt_ids for t in trajs] == [[1, 2], [1, 2]] and groups_trained == 1
    assert trajs[1].completion_ids == [5, 6, 7, 8] and trajs[1].completion_mask == [1, 1, 1, 1]


def test_keep_zero_variance_groups_when_disabled():
    trajs, groups_trained = build_trajectories(
        _groups([1.0, 0.0, 0.5, 0.5]), GRPOAlgoConfig(drop_zero_variance_groups=False), ROLLOUT
    )
    assert [t.advantages for t in trajs][2:] == [[0.0], [0.0, 0.0]] and groups_trained == 2


def test_truncated_samples_masked_and_missing_rewards_excluded():
    trajs, _ = build_trajectories(_groups([1.0, 0.0, math.nan, 0.5]), GRPOAlgoConfig(mask_truncated=True), ROLLOUT)
    # The truncated sample is masked out; the unrewarded sample is excluded; group 1 has one
    # valid reward left, so it carries no signal and is dropped too.
    assert len(trajs) == 1 and trajs[0].completion_ids == [5, 6]


def test_refill_rounds_merge_and_the_batch_is_trimmed_to_prompts_per_step():
    # Round 1: one group with signal of two; round 2: two more with signal. Merged: three
    # groups with signal, but the learner gets prompts_per_step = 2 of them.
    merged = _groups([1.0, 0.0, 0.5, 0.5], accuracy=[1.0, 0.0, 0.0, 0.0])
    merged.extend(_groups([0.0, 1.0, 1.0, 0.0], accuracy=[0.0, 1.0, 1.0, 0.0]))
    assert len(merged.problems) == 4 and len(merged.samples) == 8 and merged.per_fn["math"][4:] == [0, 1, 1, 0]
    trajs, groups_trained = build_trajectories(merged, GRPOAlgoConfig(), ROLLOUT)
    assert groups_trained == 2 and len(trajs) == 4
    assert [t.prompt_ids for t in trajs] == [[1, 2], [1, 2], [1, 2], [1, 2]]  # groups 0 and 2
    assert trajs[2].completion_ids == [5, 6] and trajs[2].advantages[0] == pytest.approx(-1.0, abs=1e-4)
    # Every statistic covers all eight samples of both rounds.
    m = step_metrics(merged, ROLLOUT.n)
    assert m["accuracy"] == 3 / 8 and m["reward/mean"] == 0.5 and m["reward/math"] == 0.5
    assert m["groups_sampled"] == 4 and m["groups_dropped_frac"] == 0.25
    assert m["truncated_frac"] == 2 / 8 and m["response_len/max"] == 4 and m["response_len/mean"] == 18 / 8


def test_accuracy_is_the_verifier_not_the_reward():
    # A weighted mix of rewards gives 0.7; only the verifier says whether the answer was right.
    m = step_metrics(_groups([0.7, 0.2, 0.7, 0.2], accuracy=[1.0, 0.0, None, 0.0]), 2)
    assert m["reward/mean"] == pytest.approx(0.45) and m["accuracy"] == pytest.approx(1 / 3)


def test_problems_at_is_a_pure_function_of_the_cursor():
    pool = list(range(10))
    first = problems_at(pool, 0, 10, seed=1)
    assert sorted(first) == pool  # one epoch is a permutation
    assert problems_at(pool, 4, 8, seed=1) == (first + problems_at(pool, 10, 10, seed=1))[4:12]


def test_tool_output_stays_masked_in_the_trajectory():
    tool_sample = Sample([5, 6, 7, 8], [-0.1, 0.0, 0.0, -0.2], "stop", loss_mask=[1, 0, 0, 1], tool_calls=1)
    groups = _groups([1.0, 0.0], samples=[tool_sample, Sample([5], [-0.1], "stop")])
    trajs, _ = build_trajectories(groups, GRPOAlgoConfig(), ROLLOUT)
    assert trajs[0].completion_mask == [1, 0, 0, 1] and trajs[1].completion_mask == [1]
    m = step_metrics(groups, 2)
    assert m["tool/calls_per_sample"] == 0.5 and m["tool/samples_with_call_frac"] == 0.5


def test_rl_config_rejects_bad_values_by_key(grpo_recipe):
    cfg = grpo_recipe.GRPOConfig
    with pytest.raises(ConfigError, match="data.tasks: unknown task 'algebra'"):
        load_config(cfg, ["--data.tasks", "{algebra: 10}"])
    with pytest.raises(ConfigError, match="train.checkpoint_every: must be 0 or more"):
        load_config(cfg, ["--train.checkpoint_every", "-1"])
    with pytest.raises(ConfigError, match="rollout.n: must be at least 1"):
        load_config(cfg, ["--rollout.n", "0"])


def test_stale_weights_need_the_importance_correction(grpo_recipe):
    with pytest.raises(ConfigError, match=r"sync.every: 2 .* set loss.tis_cap"):
        load_config(grpo_recipe.GRPOConfig, ["--sync.every", "2"])
    cfg = load_config(grpo_recipe.GRPOConfig, ["--sync.every", "2", "--loss.tis_cap", "2.0"])
    assert cfg.sync.every == 2 and cfg.loss.tis_cap == 2.0


def test_a_missing_model_path_names_the_key(tmp_path, monkeypatch):
    from rlpost.config import check_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="model_path: no such file or folder: runs/sft_tiny/model"):
        check_path("model_path", "runs/sft_tiny/model")
    with pytest.raises(ConfigError, match="data.gsm8k: no such file or folder: runs/x.jsonl"):
        check_path("data.gsm8k", "runs/x.jsonl")
    with pytest.raises(ConfigError, match="model_path"):
        check_path("model_path", "./model")
    check_path("model_path", "HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id, for users with a network
    (tmp_path / "runs" / "model").mkdir()
    check_path("model_path", "runs/model")


def test_async_rl_needs_an_off_policy_correction_and_no_refill(grpo_recipe):
    with pytest.raises(ConfigError, match=r"async.max_staleness: 1 .* set loss.tis_cap .* or loss.correction"):
        load_config(grpo_recipe.GRPOConfig, ["--async.max_staleness", "1"])
    cfg = load_config(grpo_recipe.GRPOConfig, ["--async.max_staleness", "2", "--loss.correction", "token_mask"])
    assert cfg.async_.max_staleness == 2 and cfg.loss.resolved_correction() == "token_mask"
    with pytest.raises(ConfigError, match="algo.refill_rounds: .* needs async.max_staleness 0"):
        load_config(
            grpo_recipe.GRPOConfig, ["--async.max_staleness", "1", "--loss.tis_cap", "2", "--algo.refill_rounds", "1"]
        )
    with pytest.raises(ConfigError, match="async.max_staleness: -1: must be 0 or more|async.max_staleness: must be"):
        load_config(grpo_recipe.GRPOConfig, ["--async.max_staleness", "-1"])
    with pytest.raises(ConfigError, match="two ways of sampling with older weights"):
        load_config(grpo_recipe.GRPOConfig, ["--async.max_staleness", "1", "--sync.every", "2", "--loss.tis_cap", "2"])
