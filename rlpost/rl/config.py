"""The config every RL recipe shares (`RLConfig`), section by section; GRPO (recipes/grpo.py) and PPO
(recipes/ppo.py) extend it with their own `algo` section (and PPO with its `critic`).

    python recipes/grpo.py --help      lists every field below with its documentation
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
from rlpost.rl.loss_config import PolicyLossConfig
from rlpost.rl.monitor import MonitorConfig
from rlpost.scoring.references import RewardSpec
from rlpost.tasks import TASKS
from rlpost.trainer import DeepSpeedConfig, OptimConfig

# What the errors of samples drawn by older weights ask for.
CORRECT = "loss.tis_cap (e.g. 2.0) or loss.correction ('token_mask', 'sequence_mask')"


@dataclass
class RLData:
    tasks: dict[str, int] = doc(
        "Answer-only practice problems (the 'rl' split, never SFT or held-out ones) per synthetic task; "
        "the pool is cycled in shuffled epochs.",
        {"arithmetic": 20000},
    )
    gsm8k: str = doc("Optional GSM8K source (local .jsonl[.gz] file/folder or hub name) added to the prompt pool.", "")

    def validate(self):
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ConfigError(f"data.tasks: unknown task {unknown[0]!r}; valid tasks: {sorted(TASKS)}")


@dataclass
class RLTrain:
    steps: int = doc("RL steps (each: rollouts, rewards, update, sync).", 100)
    max_minutes: float = doc("Stop after this many minutes of RL (0: no limit); the step count still bounds it.", 0.0)
    eval_every: int = doc("Held-out evaluation every N steps, and always at the end (0: only at the end).", 25)
    checkpoint_every: int = doc(
        "Checkpoint every N steps, and always at the end or when max_minutes stops the run (0: only then).", 25
    )

    def validate(self):
        for key in ("steps", "eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be 0 or more, got {getattr(self, key)}")


@dataclass
class RolloutConfig:
    n: int = doc("Samples per prompt (the GRPO group size).", 8)
    prompts_per_step: int = doc("Prompts per step (each sampled n times).", 32)
    max_new_tokens: int = doc("Longest completion in tokens (also the loss normaliser of Dr. GRPO).", 128)
    temperature: float = doc("Sampling temperature.", 1.0)
    top_p: float = doc("Nucleus sampling threshold.", 1.0)

    def validate(self):
        for key in ("n", "prompts_per_step", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rollout.{key}: must be at least 1, got {getattr(self, key)}")


@dataclass
class RewardsConfig:
    functions: list[RewardSpec] = field(default_factory=lambda: [RewardSpec(name="math")])
    num_workers: int = doc("Reward worker actors.", 1)
    default_reward: float | None = doc(
        "Reward of a sample no function scored (None: excluded from the advantage).", None
    )


@dataclass
class AsyncConfig:
    max_staleness: int = doc(
        "Asynchronous RL: how many policy updates older than the learner a trained sample may be. 0: "
        "on-policy (the engines wait while the learner trains). N >= 1: the engines sample the next N "
        "batches while the learner trains, each sample tagged with the policy version that sampled it; "
        "the loss corrects with loss.correction (or loss.tis_cap) against the logprobs the engine sampled with.",
        0,
    )

    def validate(self):
        if self.max_staleness < 0:
            raise ConfigError(f"async.max_staleness: must be 0 or more, got {self.max_staleness}")


@dataclass
class RLConfig:
    model_path: str = doc("Policy to start from: an HF folder (e.g. the SFT model).", "runs/sft_tiny/model")
    run_dir: str = doc("Output folder of this run.", "runs/grpo_tiny")
    resume: bool = doc("Continue from the latest checkpoint in run_dir.", False)
    seed: int = doc("Seed of prompt order and sampling.", 0)
    train: RLTrain = section(RLTrain)
    data: RLData = section(RLData)
    rollout: RolloutConfig = section(RolloutConfig)
    vllm: VLLMConfig = field(default_factory=lambda: VLLMConfig(num_cpus=0.5))
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
    async_: AsyncConfig = section(AsyncConfig)  # `async` in YAML and flags

    def validate(self):
        uncorrected = self.loss.resolved_correction() == "none"
        if self.sync.every > 1 and uncorrected:
            raise ConfigError(
                f"sync.every: {self.sync.every} lets the engines sample with weights older than the learner's; "
                f"set {CORRECT} so the learner corrects for it"
            )
        staleness = self.async_.max_staleness
        if staleness and self.sync.every > 1:
            raise ConfigError(
                f"async.max_staleness: {staleness} and sync.every: {self.sync.every} are two ways of sampling with "
                "older weights; use one (async keeps the engines busy while the learner trains)"
            )
        if staleness and uncorrected:
            raise ConfigError(
                f"async.max_staleness: {staleness} trains on samples of older policies; set {CORRECT} so the "
                "learner corrects for it"
            )
