"""PPO's critic: the policy's architecture with a scalar head, one value per completion token.

The critic is a sequence-classification model like the reward model (rlpost/rlhf/reward_model.py),
saved as an HF folder the same way, initialised from the reward model (InstructGPT, OpenRLHF)
or from the policy, by `critic.init`. It trains with the learner's machinery (rlpost/rl/learner.py:
shards, mini-batches, micro-batches, globally aggregated losses, DeepSpeed checkpoints) on its
own DeepSpeed ranks, each a Ray actor: time-shared with the learner on one box, its own GPUs on
a cluster. Its values sit in the learner's logprob columns: column t is the value of the state
before completion token t + 1 (the head's output at position t).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from rlpost.algorithms import value_loss
from rlpost.config import ConfigError, doc
from rlpost.rl.learner import Learner
from rlpost.rl.trajectory import Trajectory, length_sorted_parts, pack, shard, unpack
from rlpost.rlhf.reward_model import read_card, reward_model_from_lm
from rlpost.tokenizer import load_tokenizer


@dataclass
class CriticConfig:
    init: str = doc(
        "Start the critic from the 'reward_model' (InstructGPT; needs the policy's tokenizer) or the 'policy' "
        "(a new zero head).",
        "policy",
    )
    path: str = doc("The reward model folder when init is 'reward_model'.", "")
    lr: float = doc("The critic's learning rate (its own AdamW; the rest of `optim` is shared).", 1e-4)
    value_clip: float = doc("How far a value may move from its rollout-time value in one update (PPO2).", 0.2)
    normalize: bool = doc(
        "Started from a reward model: put its values on the reward card's normalised scale, (v - mean) / std, "
        "the scale of the reward with `normalize: true` (as OpenRLHF normalises its critic like its reward).",
        True,
    )
    warmup_steps: int = doc("Steps that train only the critic before the policy moves.", 0)
    num_cpus: float = doc("CPUs per critic rank bundle (one per deepspeed.world_size rank).", 0.5)
    num_gpus: float = doc("GPUs per critic rank bundle.", 0.0)

    def validate(self):
        if self.init not in ("policy", "reward_model"):
            raise ConfigError(f"critic.init: {self.init!r} is not one of ['policy', 'reward_model']")
        if self.init == "reward_model" and not self.path:
            raise ConfigError("critic.path: critic.init is 'reward_model', so give the reward model's folder")
        if self.warmup_steps < 0:
            raise ConfigError(f"critic.warmup_steps: must be 0 or more, got {self.warmup_steps}")


def check_critic_tokenizer(critic_path: str, policy_path: str) -> None:
    """The critic reads the policy's token ids, so a reward model it starts from must share the
    policy's vocabulary."""
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(critic_path).get_vocab() != AutoTokenizer.from_pretrained(policy_path).get_vocab():
        raise ConfigError(
            f"critic.path: the reward model at {critic_path} has another tokenizer than the policy at "
            f"{policy_path}; start the critic from the policy (critic.init: policy)"
        )


def critic_model(path: str, init: str):
    """A scalar-head model on the backbone at `path`; from a causal LM its head starts at zero,
    so the first values are 0 rather than noise."""
    model = reward_model_from_lm(path, load_tokenizer(path))
    if init == "policy":
        torch.nn.init.zeros_(model.score.weight)
    return model


def value_scale(card: dict, init: str, normalize: bool) -> tuple[float, float]:
    """(shift, scale) that put a critic's raw head outputs on the reward's scale: the reward card's
    normalisation when the critic starts from that reward model and `normalize` is on, else (0, 1)."""
    norm = card.get("normalization") if init == "reward_model" and normalize else None
    if not norm:
        return 0.0, 1.0
    std = norm["std"] if norm["std"] > 0 and math.isfinite(norm["std"]) else 1.0
    return float(norm["mean"]), float(std)


class Critic(Learner):
    """One critic rank (a Ray actor). All ranks must receive every call of a step. The learner's
    update loop runs with the clipped value loss in place of the policy loss."""

    def __init__(self, model_path: str, critic, optim, deepspeed, loss, **ranks):
        from dataclasses import replace

        self.critic_cfg = critic
        super().__init__(
            model_path,
            replace(optim, lr=critic.lr),
            deepspeed,
            loss,
            model=critic_model(model_path, critic.init),
            **ranks,
        )
        self.token_metrics = ["value_loss", "value_clip_frac"]
        self.shift, self.scale = value_scale(read_card(model_path), critic.init, critic.normalize)

    def _values(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Values [B, T-1] in the logprob columns, on the reward's scale (`value_scale`)."""
        module = self.trainer.engine.module
        hidden = module.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        return (module.score(hidden).squeeze(-1).float()[:, :-1] - self.shift) / self.scale

    @torch.no_grad()
    def values(self, trajectories: list[Trajectory]) -> list[list[float]]:
        """This rank's shard's values, one list per completion token; `unshard` the ranks' results."""
        mine = shard(trajectories, self.rank, self.world_size)
        batch = self.trainer.to_device(pack(mine, self.tokenizer.pad_token_id))
        ids, last = batch["input_ids"], batch["last"]
        out = torch.zeros(ids.shape[0], ids.shape[1] - 1, device=ids.device)
        size = self.loss_cfg.micro_batch_size
        passes = math.ceil(math.ceil(len(trajectories) / self.world_size) / size)  # lockstep under ZeRO-3
        self.trainer.train_mode(False)
        for idx in length_sorted_parts(torch.arange(len(mine)), last, passes):
            if len(idx) == 0:
                self._values(ids[:1, :2])
                continue
            width = int(last[idx].max()) + 1
            out[idx, :width] = self._values(ids[idx, : width + 1])
        return unpack(out, batch, mine)

    def train(self, trajectories: list[Trajectory]) -> dict:
        """The critic's update on trajectories carrying `values` (rollout time) and `returns`;
        metrics named critic/*, and this rank's seconds as time/critic."""
        t0 = time.perf_counter()
        batch = self.trainer.to_device(
            pack(shard(trajectories, self.rank, self.world_size), self.tokenizer.pad_token_id)
        )
        out = self._update(batch, math.ceil(len(trajectories) / self.world_size), None, None, 1.0)
        return {**{f"critic/{k}": v for k, v in out.items()}, "time/critic": time.perf_counter() - t0}

    def _micro_batch_loss(self, batch, idx, *_policy_inputs):
        clip = self.critic_cfg.value_clip
        width = int(batch["last"][idx].max()) + 1
        mask = batch["mask"][idx, :width]
        old, returns = batch["values"][idx, :width], batch["returns"][idx, :width]
        values = self._values(batch["input_ids"][idx, : width + 1])
        per_token = value_loss(values, old, returns, mask, clip)
        with torch.no_grad():
            clipped = (old + (values - old).clamp(-clip, clip) - returns) ** 2 > (values - returns) ** 2
        stats = {
            "tokens": mask.sum().item(),
            "value_loss": torch.where(mask, per_token.detach(), 0.0).sum().item(),
            "value_clip_frac": torch.where(mask, clipped, False).sum().item(),
        }
        # No value-loss coefficient: the critic has its own optimizer, so one would only rescale
        # the gradient against optim.grad_clip.
        return per_token, mask, stats
