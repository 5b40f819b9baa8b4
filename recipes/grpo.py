"""Stage 3: GRPO on answer-only practice problems, distributed over Ray actors.

    python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--rollout.n 16 --optim.lr 5e-5]
    ray job submit --working-dir . -- python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml \
        --model_path $PWD/runs/sft_tiny/model --run_dir $PWD/runs/grpo_tiny

One step (the loop of rlpost/rl/loop.py, shared with PPO; GRPO's own part is here: `GRPO.update`,
which turns the step's samples into trajectories with group advantages, `build_trajectories`):
    prompts ──▶ RolloutWorker × R (vLLM) ──▶ RewardWorker × W ──▶ group advantages per token
        ──▶ Learner ranks (DeepSpeed, PPO-clip) ──▶ weight sync to every engine ──▶ metrics
with a held-out evaluation every `train.eval_every` steps and at the end, and an atomic checkpoint
every `train.checkpoint_every` steps (`--resume` continues from the latest one). The reward-hacking
monitor (rlpost/rl/monitor.py) reads every step and may end the run early. Metrics go to
`<run_dir>/metrics.jsonl` (and wandb, offline by default), the actors' own output to
`<run_dir>/actors.log`; the final policy is an HF folder in `<run_dir>/model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.algorithms import ADVANTAGE_ESTIMATORS, truncation_mask, zero_variance_groups
from rlpost.config import ConfigError, doc, section
from rlpost.distributed.cluster import mean_over_ranks
from rlpost.rl.config import RLConfig
from rlpost.rl.loop import rl_command, run
from rlpost.rl.steps import StepSamples
from rlpost.rl.trajectory import Trajectory


@dataclass
class GRPOAlgoConfig:
    advantage: str = doc(
        "'grpo' (group mean/std), 'drgrpo' (group mean only, Liu et al. 2025) or 'rloo' (leave-one-out).", "grpo"
    )
    drop_zero_variance_groups: bool = doc(
        "Dynamic sampling (DAPO): drop groups whose rewards all agree (no signal).", True
    )
    refill_rounds: int = doc(
        "Extra sampling rounds to refill dropped groups up to prompts_per_step (0: train on fewer).", 0
    )
    mask_truncated: bool = doc(
        "Overlong filtering (DAPO): leave samples cut off at max_new_tokens out of the loss. "
        "DAPO's soft length penalty is the `overlong` reward.",
        False,
    )

    def validate(self):
        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ConfigError(f"algo.advantage: {self.advantage!r} is not one of {sorted(ADVANTAGE_ESTIMATORS)}")
        if self.refill_rounds < 0:
            raise ConfigError(f"algo.refill_rounds: must be 0 or more, got {self.refill_rounds}")


def build_trajectories(step_samples: StepSamples, algo: GRPOAlgoConfig, rollout):
    """Advantages per sample, broadcast over its tokens, as the trajectories the learner trains on.

    Left out of the loss: samples without a reward, groups with no signal (dynamic sampling),
    truncated samples with `mask_truncated`, and groups beyond `prompts_per_step` (refill rounds
    may bring more). Returns (trajectories, number of groups trained on)."""

    n = rollout.n
    rewards = torch.tensor(step_samples.total_rewards, dtype=torch.float32)
    advantages = ADVANTAGE_ESTIMATORS[algo.advantage](rewards, n)
    keep = ~torch.isnan(rewards)
    if algo.drop_zero_variance_groups:
        keep &= ~zero_variance_groups(rewards, n).repeat_interleave(n)
    if algo.mask_truncated:
        keep &= ~truncation_mask([s.finish_reason for s in step_samples.samples])
    group_kept = keep.view(-1, n).any(dim=1)
    group_kept &= group_kept.cumsum(0) <= rollout.prompts_per_step
    keep &= group_kept.repeat_interleave(n)
    trajectories = [
        Trajectory(
            step_samples.prompt_ids[i // n],
            s.token_ids,
            s.logprobs,
            s.loss_mask or [1] * len(s.token_ids),
            [float(advantages[i])] * len(s.token_ids),
        )
        for i, s in enumerate(step_samples.samples)
        if keep[i]
    ]
    return trajectories, int(group_kept.sum())


@dataclass
class GRPOConfig(RLConfig):
    algo: GRPOAlgoConfig = section(GRPOAlgoConfig)

    def validate(self):
        super().validate()
        if self.async_.max_staleness and self.algo.refill_rounds:
            raise ConfigError(
                "algo.refill_rounds: refilling a step samples more prompts while the learner waits; "
                "it needs async.max_staleness 0"
            )


class GRPO:
    """GRPO's update: group advantages broadcast over each sample's tokens, then the learner's
    PPO-clip step (no critic)."""

    name = "grpo"
    critic = None  # GRPO's baseline is the group: no critic ranks

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        # Dynamic sampling refills the step with new prompts while too few groups carry a signal.
        self.refill_rounds = cfg.algo.refill_rounds if cfg.algo.drop_zero_variance_groups else 0

    def update(self, actors, step_samples, step: int) -> tuple[dict, bool]:
        cfg, metrics = self.cfg, {}
        trajectories, metrics["groups_trained"] = build_trajectories(step_samples, cfg.algo, cfg.rollout)
        metrics["samples_trained"] = len(trajectories)
        if not trajectories:
            print(f"step {step + 1}: every group was dropped (no reward signal); skipping the update")
            return metrics, False
        metrics.update(mean_over_ranks(actors.learners.call("train", trajectories, cfg.rollout.temperature)))
        return metrics, True

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def main(cfg: GRPOConfig) -> dict:
    return run(cfg, GRPO(cfg))


if __name__ == "__main__":
    rl_command(GRPOConfig, main, "GRPO")
