"""Stage 3: GRPO on answer-only practice problems, distributed over Ray actors.

    python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--rollout.n 16 --optim.lr 5e-5]
    ray job submit --working-dir . -- python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml \
        --model_path $PWD/runs/sft_tiny/model --run_dir $PWD/runs/grpo_tiny

One step (the loop of rlpost/rl/loop.py, shared with PPO; GRPO's own part is `GRPO.update`):
    prompts ──▶ RolloutWorker × R (vLLM) ──▶ RewardWorker × W ──▶ group advantages per token
        ──▶ Learner ranks (DeepSpeed, PPO-clip) ──▶ weight sync to every engine ──▶ metrics
with a held-out evaluation every `eval_every` steps and at the end, and an atomic checkpoint
every `checkpoint_every` steps (`--resume` continues from the latest one). The reward-hacking
monitor (rlpost/rl/monitor.py) reads every step and may end the run early. Metrics go to
`<run_dir>/metrics.jsonl` (and wandb, offline by default), the actors' own output to
`<run_dir>/actors.log`; the final policy is an HF folder in `<run_dir>/model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlpost.config import ConfigError, doc, section
from rlpost.distributed.engine import VLLMConfig
from rlpost.distributed.placement import PlacementConfig
from rlpost.distributed.tools import ToolConfig
from rlpost.evaluate import EvalConfig
from rlpost.metrics import LoggingConfig
from rlpost.rl.actors import SyncConfig
from rlpost.rl.learner import PolicyLossConfig
from rlpost.rl.monitor import MonitorConfig
from rlpost.rl.steps import AlgoConfig, RewardsConfig, RLData, RolloutConfig
from rlpost.trainer import DeepSpeedConfig, OptimConfig


@dataclass
class GRPOConfig:
    model_path: str = doc("Policy to start from: an HF folder (e.g. the SFT model).", "runs/sft_tiny/model")
    run_dir: str = doc("Output folder of this run.", "runs/grpo_tiny")
    resume: bool = doc("Continue from the latest checkpoint in run_dir.", False)
    seed: int = doc("Seed of prompt order and sampling.", 0)
    steps: int = doc("RL steps (each: rollouts, rewards, update, sync).", 100)
    max_minutes: float = doc("Stop after this many minutes of RL (0: no limit); the step count still bounds it.", 0.0)
    eval_every: int = doc("Held-out evaluation every N steps, and always at the end (0: only at the end).", 25)
    checkpoint_every: int = doc(
        "Checkpoint every N steps, and always at the end or when max_minutes stops the run (0: only then).", 25
    )
    data: RLData = section(RLData)
    rollout: RolloutConfig = section(RolloutConfig)
    vllm: VLLMConfig = field(default_factory=lambda: VLLMConfig(num_cpus=0.5))
    algo: AlgoConfig = section(AlgoConfig)
    loss: PolicyLossConfig = section(PolicyLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, grad_clip=1.0))
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig)
    sync: SyncConfig = section(SyncConfig)
    rewards: RewardsConfig = section(RewardsConfig)
    tools: ToolConfig = section(ToolConfig)
    placement: PlacementConfig = section(PlacementConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(problems_per_task=200))
    logging: LoggingConfig = section(LoggingConfig)
    monitor: MonitorConfig = section(MonitorConfig)

    def validate(self):
        for key in ("steps", "eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be 0 or more, got {getattr(self, key)}")
        if self.sync.every > 1 and self.loss.tis_cap <= 0:
            raise ConfigError(
                f"sync.every: {self.sync.every} lets the engines sample with weights older than the learner's; "
                "set loss.tis_cap (e.g. 2.0) so the learner corrects for it"
            )


class GRPO:
    """GRPO's update: group advantages broadcast over each sample's tokens, then the learner's
    PPO-clip step (no critic)."""

    name = "grpo"

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg

    def update(self, actors, groups, step: int) -> tuple[dict, bool]:
        from rlpost.distributed.cluster import mean_over_ranks
        from rlpost.rl.steps import build_trajectories

        cfg, metrics = self.cfg, {}
        trajectories, metrics["groups_trained"] = build_trajectories(groups, cfg.algo, cfg.rollout)
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


def train(cfg: GRPOConfig) -> dict:
    from rlpost.rl.loop import run

    return run(cfg, GRPO(cfg))


if __name__ == "__main__":
    from rlpost.rl.loop import main

    main(GRPOConfig, train, "GRPO")
