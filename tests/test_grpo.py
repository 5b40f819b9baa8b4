"""GRPO through the real actors: vLLM rollout workers, DeepSpeed learner ranks, reward workers."""

from __future__ import annotations

import json
import math

import pytest
from helpers import (
    assert_a_busy_engine_times_the_sync_out,
    engine_greedy,
    grpo_config,
    metrics,
    sync_check_prompts,
    train_on_random_tokens,
    transformers_greedy,
)

pytestmark = pytest.mark.slow


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


USER_REWARD = """
def brevity(prompts, completions, **columns):
    # A user's own reward, in a file outside the project: shorter answers score higher, but
    # only for prompts of even length, so some groups carry no signal and refill rounds run.
    return [-len(c) / 100 if len(p) % 2 == 0 else 0.0 for p, c in zip(prompts, completions)]
"""


@pytest.fixture(scope="module")
def grpo_run(sft_run, ray_cluster, tmp_path_factory):
    from rlpost.config import load_recipe

    user_dir = tmp_path_factory.mktemp("user_rewards")
    (user_dir / "my_rewards.py").write_text(USER_REWARD)
    run_dir = tmp_path_factory.mktemp("grpo")
    rewards = f"[{{name: math}}, {{name: '{user_dir}/my_rewards.py:brevity', weight: 0.5}}]"
    extra = ["--rewards.functions", rewards, "--algo.refill_rounds", "3"]
    result = load_recipe("grpo").main(grpo_config(sft_run / "model", run_dir, extra))
    return run_dir, result


def test_two_steps_finite_metrics_and_changed_weights(grpo_run, sft_run):
    run_dir, result = grpo_run
    assert result["steps"] == 2
    steps = [m for m in metrics(run_dir) if m["step"] in (1, 2) and "loss" in m]
    assert len(steps) == 2
    for m in steps:
        for key in (
            "reward/mean",
            "reward/std",
            "accuracy",
            "groups_dropped_frac",
            "response_len/mean",
            "truncated_frac",
            "entropy",
            "clip_frac",
            "logprob_gap",
            "grad_norm",
            "time/rollout",
            "time/reward",
            "time/train",
            "time/sync",
            "time/reference",
        ):
            assert key in m and m[key] is not None and math.isfinite(m[key]), key
        assert m["samples_trained"] > 0
        # The learner recomputes the logprobs vLLM sampled with; bf16 on both sides keeps them close.
        assert m["logprob_gap"] < 0.1
        assert "reward/brevity" in m and m["reward/brevity"] < 0  # the user's file was loaded and used
    before, after = _weights(sft_run / "model"), _weights(run_dir / "model")
    assert any(not (before[k] == after[k]).all() for k in before)
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_2"


def test_refill_rounds_merge_and_trim_the_batch(grpo_run):
    """Groups without signal are refilled round by round (4 prompts each); the learner gets at
    most prompts_per_step groups, and the step's statistics cover every sampled group."""
    run_dir, _ = grpo_run
    steps = [m for m in metrics(run_dir) if "cursor" in m]
    cursor = 0
    for m in steps:
        assert m["groups_sampled"] in (4, 8, 12, 16)
        cursor += m["groups_sampled"]
        assert m["cursor"] == cursor
        assert 0 < m["groups_trained"] <= 4 and m["samples_trained"] <= 4 * 4
    assert any(m["groups_sampled"] > 4 for m in steps)  # about half the groups have no signal


MONITOR_METRICS = (
    "monitor/distinct_1",
    "monitor/distinct_2",
    "monitor/repeat_run",
    "monitor/repeat_run_max",
    "monitor/compression_ratio",
    "monitor/mean_length",
    "monitor/truncated_frac",
    "monitor/proxy",
    "monitor/canary/repeat",
    "monitor/canary/empty",
    "monitor/canary/echo",
    "monitor/canary/policy_median",
    "monitor/canary/outscored",
    "monitor/alarm/canary",
    "monitor/alarm/proxy_up_judge_down",
    "monitor/warning/kl_negative",
    "time/canaries",
)


def test_the_monitor_logs_every_step_and_plots_the_run(grpo_run):
    run_dir, _ = grpo_run
    steps = [m for m in metrics(run_dir) if "cursor" in m]
    assert len(steps) == 2
    for m in steps:
        for key in MONITOR_METRICS:
            assert key in m and m[key] is not None and math.isfinite(m[key]), key
        assert m["monitor/proxy"] == pytest.approx(m["reward/mean"])
        assert m["monitor/mean_length"] == pytest.approx(m["response_len/mean"])
        assert "monitor/judge" not in m and "monitor/kl" not in m  # no judge, no KL term in this run
    png = (run_dir / "monitor.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


MONITOR_REWARDS = """
from collections import Counter


def repetition(prompts, completions, **columns):
    # A reward that pays for repetition: the share of a completion's words that are its most frequent one.
    return [Counter(c.split()).most_common(1)[0][1] / len(c.split()) if c.split() else 0.0 for c in completions]


def variety(prompts, completions, **columns):
    # The judge: distinct words / words.
    return [len(set(c.split())) / len(c.split()) if c.split() else 0.0 for c in completions]
"""


def test_the_monitor_stops_a_run_whose_reward_pays_for_repetition(sft_run, ray_cluster, tmp_path, capsys):
    """The repeated-word canary outscores the policy's samples at once: with stop_keep_best the run
    ends after step 1 and keeps the policy the judge scored best on the fixed held-out prompts (the
    one before the first update: judge_every 10). The judge, a weight-0 reward function, is logged
    as monitor/judge and left out of the reward."""
    from rlpost.config import load_recipe

    (tmp_path / "monitor_rewards.py").write_text(MONITOR_REWARDS)
    run_dir = tmp_path / "run"
    extra = [
        "--rewards.functions",
        f"[{{name: '{tmp_path}/monitor_rewards.py:repetition'}}]",
        "--monitor.judge",
        f"{{name: '{tmp_path}/monitor_rewards.py:variety'}}",
        "--monitor.action",
        "stop_keep_best",
        "--train.eval_every",
        "0",
        "--train.checkpoint_every",
        "0",
    ]
    result = load_recipe("grpo").main(grpo_config(sft_run / "model", run_dir, extra))
    assert result["steps"] == 1
    (m,) = [m for m in metrics(run_dir) if "cursor" in m]
    assert m["monitor/alarm/canary"] == 1 and m["monitor/canary/repeat"] == 1.0
    assert 0 < m["monitor/judge"] <= 1 and 0 < m["monitor/best_judge"] <= 1
    assert "reward/variety" not in m and m["reward/mean"] == pytest.approx(m["reward/repetition"])
    out = capsys.readouterr().out
    assert "monitor, step 1: canary alarm" in out and "monitor: stopping after step 1" in out
    assert (run_dir / "best_policy" / "model.safetensors").exists()
    kept = json.loads((run_dir / "best_policy" / "judge.json").read_text())
    assert kept["after_step"] == 0 and kept["judge"] == pytest.approx(m["monitor/best_judge"])
    assert [r["monitor/judge_held_out"] for r in metrics(run_dir) if "monitor/judge_held_out" in r] == [kept["judge"]]
    assert (run_dir / "monitor.png").exists()


def test_learner_with_kl_term_and_several_updates_per_batch(sft_run, ray_cluster):
    """kl_coef > 0 loads a frozen reference; ppo_epochs × mini_batches updates drift from it."""
    import random

    import ray

    from rlpost.cache import cache_env
    from rlpost.distributed.weight_sync import free_port
    from rlpost.rl.learner import Learner, PolicyLossConfig
    from rlpost.rl.trajectory import Trajectory
    from rlpost.trainer import DeepSpeedConfig, OptimConfig

    loss = PolicyLossConfig(kl_coef=0.1, ppo_epochs=2, mini_batches=2, micro_batch_size=3)
    learner = (
        ray.remote(Learner)
        .options(num_cpus=1, runtime_env={"env_vars": cache_env()})
        .remote(
            str(sft_run / "model"),
            OptimConfig(lr=1e-3),
            DeepSpeedConfig(bf16=False),
            loss,
            rank=0,
            master_addr="127.0.0.1",
            master_port=free_port(),
            total_steps=2,
            max_new_tokens=20,
        )
    )
    rng = random.Random(0)
    trajectories = []
    for i in range(8):
        completion = [rng.randrange(20, 500) for _ in range(rng.randint(4, 20))]
        trajectories.append(
            Trajectory(
                [1, 5 + i, 7],
                completion,
                [-3.0] * len(completion),
                [1] * len(completion),
                [rng.choice([-1.0, 1.0])] * len(completion),
            )
        )
    try:
        first = ray.get(learner.train.remote(trajectories, 1.0))
        second = ray.get(learner.train.remote(trajectories, 1.0))
    finally:
        ray.kill(learner)
    assert first["time/reference"] > 0
    # The first update starts at the reference (KL 0); the later ones have moved away from it.
    assert first["kl"] > 0 and second["kl"] > 0
    # fp32 without ZeRO: DeepSpeed's own clipping there does not report the norm; ours does.
    assert all(math.isfinite(m[k]) for m in (first, second) for k in ("loss", "entropy", "grad_norm", "clip_frac"))


def test_weight_sync_makes_vllm_match_transformers(sft_run, ray_cluster, tmp_path):
    """After a learner update and an object-store sync, vLLM's greedy output equals transformers'
    greedy output on the learner's new weights, and differs from the greedy output before. A sync
    that a rollout worker never answers stops within sync.timeout_s with an error naming it.
    (The collective backend: tests/test_multinode.py, across nodes.)"""
    from rlpost.rl.actors import RLActors
    from rlpost.tokenizer import load_tokenizer

    cfg = grpo_config(
        sft_run / "model",
        tmp_path,
        [
            "--sync.backend",
            "object_store",
            "--vllm.dtype",
            "float32",
            "--deepspeed.bf16",
            "false",
            "--rewards.num_workers",
            "1",
        ],
    )
    tokenizer = load_tokenizer(cfg.model_path)
    prompts = sync_check_prompts(tokenizer)
    actors = RLActors(cfg, total_steps=2, verifiers={"arithmetic": "math"})
    try:
        before = engine_greedy(actors, prompts, tokenizer)
        train_on_random_tokens(actors, prompts)
        sync_s = actors.sync_weights()
        after = engine_greedy(actors, prompts, tokenizer)
        state = actors.learners.call("state_dict")[0]
        assert_a_busy_engine_times_the_sync_out(actors)
    finally:
        actors.shutdown()
    assert after == transformers_greedy(cfg.model_path, state, prompts, tokenizer)
    assert after != before
    assert sync_s < 30


def test_a_bad_reward_reference_stops_the_run_before_the_engines_start(sft_run, ray_cluster, tmp_path):
    """The reward workers load first: a missing function fails at start-up with the config key
    and the reference, before any learner or vLLM engine is created."""
    from rlpost.config import ConfigError
    from rlpost.rl.actors import RLActors

    (tmp_path / "my_rewards.py").write_text("def other(prompts, completions, **columns):\n    return [0.0]\n")
    cfg = grpo_config(
        sft_run / "model", tmp_path, ["--rewards.functions", f"[{{name: '{tmp_path}/my_rewards.py:brevity'}}]"]
    )
    with pytest.raises(ConfigError, match=r"rewards.functions: .*my_rewards.py:brevity.*has no attribute 'brevity'"):
        RLActors(cfg, total_steps=1, verifiers={"arithmetic": "math"})
