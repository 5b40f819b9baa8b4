"""PPO with a critic through the real actors: vLLM rollout workers, DeepSpeed learner and critic
ranks, reward workers."""

from __future__ import annotations

import math

import pytest
from helpers import grpo_config, metrics

from rlpost.config import load_recipe

pytestmark = pytest.mark.slow

PPO_METRICS = (
    "objective/scores",
    "objective/non_score_reward",
    "objective/kl",
    "objective/kl_coef",
    "kl",
    "entropy",
    "approx_kl",
    "clip_frac",
    "critic/value_loss",
    "critic/value_clip_frac",
    "critic/values_mean",
    "critic/returns_mean",
    "critic/explained_variance",
    "critic/grad_norm",
    "loss",
    "grad_norm",
)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# One optimizer step per batch, so a sample's logprob_gap compares vLLM with the very weights it sampled with.
ADAPTIVE = [
    "--algo.adaptive_kl",
    "true",
    "--algo.kl_target",
    "0.01",
    "--algo.kl_horizon",
    "100",
    "--loss.mini_batches",
    "1",
]


@pytest.fixture(scope="module")
def ppo_run(sft_run, ray_cluster, tmp_path_factory):
    """3 steps; the first trains only the critic (warm-up)."""
    run_dir = tmp_path_factory.mktemp("ppo")
    extra = ["--train.steps", "3", "--critic.warmup_steps", "1", *ADAPTIVE]
    result = load_recipe("ppo").main(grpo_config(sft_run / "model", run_dir, extra, recipe="ppo"))
    return run_dir, result


def _shrunk(beta, kl):
    """β after a step of KL `kl` with target .01, horizon 100 and 16 samples."""
    return beta * (1 + max(-0.2, min(0.2, kl / 0.01 - 1)) * 16 / 100)


def test_three_steps_warm_up_the_critic_then_update_both(ppo_run, sft_run):
    run_dir, result = ppo_run
    assert result["steps"] == 3
    steps = [m for m in metrics(run_dir) if "critic/loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    warm_up, first, second = steps
    # Step 1 trains only the critic: no policy loss, nothing to sync.
    assert "loss" not in warm_up and warm_up["time/sync"] == 0.0
    for m in (first, second):
        for key in PPO_METRICS:
            assert math.isfinite(m[key]), (key, m[key])
        assert m["samples_trained"] == 16 and m["critic/value_loss"] > 0
        assert m["time/sync"] > 0  # the update reached the engines
    # The policy is the reference until its first update (step 2): KL exactly 0 before, not after.
    assert warm_up["kl"] == first["kl"] == 0.0 and second["objective/kl"] != 0.0
    # The critic's head starts at zero (values 0); after one update it predicts something.
    assert warm_up["critic/values_mean"] == 0.0 and first["critic/values_mean"] != 0.0
    # The adaptive β shrinks while the KL is below its target.
    assert first["objective/kl_coef"] == pytest.approx(_shrunk(warm_up["objective/kl_coef"], 0.0))
    assert second["objective/kl_coef"] == pytest.approx(_shrunk(first["objective/kl_coef"], 0.0))
    # The engines sampled with the learner's weights: its probabilities of the sampled tokens
    # match vLLM's, at step 2 (both still the SFT policy) and at step 3 (after a sync; an unsynced
    # engine would still sample with the SFT policy, and this learner moves fast at lr 1e-3).
    assert first["logprob_gap"] < 0.05 and second["logprob_gap"] < 0.05
    before, policy = _weights(sft_run / "model"), _weights(run_dir / "model")
    assert any(not before[k].equal(policy[k]) for k in before)
    critic = _weights(run_dir / "critic_model")
    assert critic["score.weight"].abs().sum() > 0
    assert all(v.isfinite().all() for v in critic.values())


def test_checkpoints_hold_the_policy_the_critic_and_beta(ppo_run):
    import torch

    run_dir, _ = ppo_run
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_3"
    assert (run_dir / "critic" / "checkpoints" / "step_3" / "policy" / "model.safetensors").exists()
    state = torch.load(
        next((run_dir / "checkpoints" / "step_3" / "engine" / "state").glob("*model_states.pt")), weights_only=False
    )
    assert state["cursor"] == 12 and state["kl_coef"] > 0


def test_resume_continues_policy_critic_and_beta(ppo_run, sft_run):
    """Runs last: continues the 3-step run to step 4."""
    run_dir, _ = ppo_run
    before = [m for m in metrics(run_dir) if "critic/loss" in m]
    result = load_recipe("ppo").main(
        grpo_config(
            sft_run / "model",
            run_dir,
            ["--train.steps", "4", "--resume", "--critic.warmup_steps", "1", *ADAPTIVE],
            recipe="ppo",
        )  # fmt: skip
    )
    assert result["steps"] == 4
    steps = [m for m in metrics(run_dir) if "critic/loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert [m["cursor"] for m in steps] == [4, 8, 12, 16]
    # β continues from the checkpoint, not from the config's start value; the policy moves at once.
    third = before[2]
    assert steps[3]["objective/kl_coef"] == pytest.approx(_shrunk(third["objective/kl_coef"], third["objective/kl"]))
    assert "loss" in steps[3] and steps[3]["kl"] != 0.0
    assert (run_dir / "critic" / "checkpoints" / "latest").read_text() == "step_4"
