"""Stage 3: GRPO on answer-only practice problems, distributed over Ray actors.

    python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--rollout.n 16 --optim.lr 5e-5]
    ray job submit --working-dir . -- python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml \
        --model_path $PWD/runs/sft_tiny/model --run_dir $PWD/runs/grpo_tiny

One step (the loop of rlpost/rl/loop.py, shared with PPO; GRPO's own part is `GRPO.update`):
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

from rlpost.config import ConfigError, section
from rlpost.distributed.cluster import mean_over_ranks
from rlpost.rl.config import RLConfig
from rlpost.rl.loop import rl_command, run
from rlpost.rl.steps import GRPOAlgoConfig, build_trajectories


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
