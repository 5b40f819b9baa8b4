"""The RL learner: one DeepSpeed rank per Ray actor, training the policy on sampled trajectories.

Each rank receives the whole step's trajectories, keeps its own shard (every world_size-th
sample), and runs the policy-gradient update with the pure loss functions of
rlpost/algorithms. The learner trains on exactly the token ids vLLM sampled; injected tool
output tokens carry mask 0 and never enter the loss. Rank 0 also serves the weights to the
rollout workers (object store or broadcast, see rlpost/weight_sync.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from rlpost.algorithms import aggregate_loss, kl_penalty, masked_mean, ppo_clip_loss
from rlpost.config import doc
from rlpost.trainer import DeepSpeedTrainer, EngineConfig, OptimConfig, token_logprobs


@dataclass
class Trajectory:
    """One sampled completion, as the learner trains on it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampling_logprobs: list[float]  # vLLM's logprob of each completion token
    completion_mask: list[int]  # 1 = sampled by the policy (trained), 0 = injected tool output
    advantage: float


@dataclass
class PolicyLossConfig:
    clip_low: float = doc("PPO ratio clip below 1 (ratio >= 1 - clip_low).", 0.2)
    clip_high: float = doc("PPO ratio clip above 1; > clip_low is DAPO's clip-higher (Yu et al. 2025).", 0.2)
    loss_agg: str = doc(
        "'token-mean' (DAPO), 'seq-mean-token-mean' (GRPO) or 'seq-mean-token-sum-norm' (Dr. GRPO).", "token-mean"
    )
    kl_coef: float = doc("Weight of the KL penalty to the frozen reference policy; 0 loads no reference model.", 0.0)
    kl_estimator: str = doc("KL estimator: 'k1', 'k2' or 'k3' (Schulman's low-variance estimator).", "k3")
    ppo_epochs: int = doc("Passes over each batch of trajectories.", 1)
    mini_batches: int = doc("Optimizer steps per epoch (the batch is split into this many mini-batches).", 1)
    micro_batch_size: int = doc("Sequences per forward/backward (gradient accumulation within a mini-batch).", 64)
    max_len: int = doc(
        "Normaliser of 'seq-mean-token-sum-norm' (tokens); the rollout's max_new_tokens is a good choice.", 256
    )

    def validate(self):
        from rlpost.algorithms import KL_ESTIMATORS, LOSS_AGG_MODES
        from rlpost.config import ConfigError

        if self.loss_agg not in LOSS_AGG_MODES:
            raise ConfigError(f"loss.loss_agg: {self.loss_agg!r} is not one of {list(LOSS_AGG_MODES)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"loss.kl_estimator: {self.kl_estimator!r} is not one of {list(KL_ESTIMATORS)}")


def pack(trajectories: list[Trajectory], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors aligned with `token_logprobs` (position t predicts token t+1)."""
    width = max(len(t.prompt_ids) + len(t.completion_ids) for t in trajectories)
    n = len(trajectories)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width - 1), dtype=torch.bool)
    sampling_lp = torch.zeros((n, width - 1))
    last = torch.zeros(n, dtype=torch.long)  # column of each sample's last completion logprob
    for i, t in enumerate(trajectories):
        ids = t.prompt_ids + t.completion_ids
        input_ids[i, : len(ids)] = torch.tensor(ids)
        start = len(t.prompt_ids) - 1  # logprob of completion token j sits at position start + j
        end = start + len(t.completion_ids)
        mask[i, start:end] = torch.tensor(t.completion_mask, dtype=torch.bool)
        sampling_lp[i, start:end] = torch.tensor(t.sampling_logprobs)
        last[i] = end - 1
    advantages = torch.tensor([t.advantage for t in trajectories], dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "mask": mask,
        "sampling_logprobs": sampling_lp,
        "advantages": advantages,
        "last": last,
    }


def _micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


@torch.no_grad()
def packed_logprobs(forward, batch: dict[str, torch.Tensor], micro_batch_size: int, temperature: float) -> torch.Tensor:
    """`token_logprobs` of a packed batch under `forward` (input ids → logits), without gradients.

    Samples go through in micro-batches of similar lengths, each cut to its longest sample;
    columns past a sample's last completion token are 0 (they are never in the loss)."""
    ids, last = batch["input_ids"], batch["last"]
    out = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    order = last.argsort(stable=True)
    for sl in _micro_batches(len(order), micro_batch_size):
        idx = order[sl]
        width = int(last[idx].max()) + 1
        cut = ids[idx, : width + 1]
        out[idx, :width] = token_logprobs(forward(cut) / temperature, cut)
    return out


class Learner:
    """One learner rank (a Ray actor). All ranks must receive every call of a step."""

    def __init__(
        self,
        model_path: str,
        optim: OptimConfig,
        engine: EngineConfig,
        loss: PolicyLossConfig,
        *,
        rank: int,
        master_addr: str,
        master_port: int,
        total_steps: int,
        seed: int = 0,
    ):
        from rlpost.model import load_model
        from rlpost.tokenizer import load_tokenizer

        self.rank, self.world_size, self.loss_cfg = rank, engine.world_size, loss
        self.trainer = DeepSpeedTrainer(
            model_path,
            optim,
            engine,
            total_steps=total_steps,
            micro_batch_size=loss.micro_batch_size,
            rank=rank,
            master_addr=master_addr,
            master_port=master_port,
            seed=seed,
        )
        self.tokenizer = load_tokenizer(model_path)
        self.reference = None
        if loss.kl_coef > 0:  # the frozen starting policy; skipped entirely when there is no KL term
            self.reference = load_model(model_path, "bfloat16" if engine.bf16 else "float32").eval()
            self.reference.requires_grad_(False)
        self.weight_group = None

    # -- the update ----------------------------------------------------------------------------
    def train(self, trajectories: list[Trajectory], temperature: float = 1.0) -> dict:
        """PPO-clip policy-gradient update on this rank's shard; returns metrics (rank-local).

        `temperature` is the sampling temperature: the policy being trained is the tempered one,
        whose logprobs are what vLLM reports for the sampled tokens."""
        cfg = self.loss_cfg
        shard = trajectories[self.rank :: self.world_size]
        batch = pack(shard, self.tokenizer.pad_token_id)
        n = len(shard)
        timings = {}
        t0 = time.perf_counter()
        ref_lp = None
        if self.reference is not None:
            ref_lp = packed_logprobs(
                lambda ids: self.reference(input_ids=ids, use_cache=False).logits,
                batch,
                cfg.micro_batch_size,
                temperature,
            )
        timings["time/reference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # With one update per batch the "old" policy is the current one: its logprobs are the
        # detached logprobs of the same forward pass. Otherwise compute them once up front.
        old_lp = None
        if cfg.ppo_epochs * cfg.mini_batches > 1:
            self.trainer.engine.eval()
            old_lp = packed_logprobs(self.trainer.logits, batch, cfg.micro_batch_size, temperature)

        stats: dict[str, list[float]] = {
            k: [] for k in ("loss", "kl", "entropy", "clip_frac", "logprob_gap", "grad_norm")
        }
        self.trainer.engine.train()
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(n) if epoch > 0 else torch.arange(n)
            for mini in torch.tensor_split(order, cfg.mini_batches):
                if len(mini) == 0:
                    continue
                valid_tokens = batch["mask"][mini].sum().clamp(min=1)
                # Micro-batches of similar lengths, each cut to its longest sample: less padding.
                mini = mini[batch["last"][mini].argsort(stable=True)]
                micro = _micro_batches(len(mini), cfg.micro_batch_size)
                for j, sl in enumerate(micro):
                    idx = mini[sl]
                    self.trainer.engine.set_gradient_accumulation_boundary(j == len(micro) - 1)
                    loss, m = self._micro_loss(batch, idx, old_lp, ref_lp, temperature)
                    # Scale so the accumulated gradient equals the mini-batch aggregate.
                    if cfg.loss_agg == "token-mean":
                        weight = batch["mask"][idx].sum() / valid_tokens
                    else:
                        weight = torch.tensor(len(idx) / len(mini))
                    self.trainer.engine.backward(loss * weight)
                    self.trainer.engine.step()
                    for k, v in m.items():
                        stats[k].append(v)
                grad_norm = self.trainer.engine.get_global_grad_norm()
                stats["grad_norm"].append(float(grad_norm) if grad_norm is not None else math.nan)
        timings["time/train"] = time.perf_counter() - t0
        out = {k: float(sum(v) / len(v)) if v else math.nan for k, v in stats.items()}
        out["lr"] = self.trainer.scheduler.get_last_lr()[0]
        out["train_tokens"] = int(batch["mask"].sum())
        return {**out, **timings}

    def _micro_loss(self, batch, idx, old_lp, ref_lp, temperature):
        cfg = self.loss_cfg
        width = int(batch["last"][idx].max()) + 1  # logprob columns; the rest is padding
        input_ids = batch["input_ids"][idx, : width + 1]
        mask = batch["mask"][idx, :width]
        logits = self.trainer.logits(input_ids) / temperature
        logprobs = token_logprobs(logits, input_ids)
        old = old_lp[idx, :width] if old_lp is not None else logprobs.detach()
        per_token, clipped = ppo_clip_loss(logprobs, old, batch["advantages"][idx], cfg.clip_low, cfg.clip_high)
        metrics = {}
        if ref_lp is not None:
            kl = kl_penalty(logprobs, ref_lp[idx, :width], cfg.kl_estimator)
            per_token = per_token + cfg.kl_coef * kl
            metrics["kl"] = masked_mean(kl.detach(), mask).item()
        loss = aggregate_loss(per_token, mask, cfg.loss_agg, max_len=cfg.max_len)
        with torch.no_grad():
            probs_logits = logits[:, :-1].float()
            entropy = torch.logsumexp(probs_logits, -1) - (probs_logits.softmax(-1) * probs_logits).sum(-1)
            # Training/inference mismatch: how far the learner's probability of each sampled
            # token is from the probability vLLM sampled it with.
            gap = (logprobs.detach() - batch["sampling_logprobs"][idx, :width]).exp().sub(1).abs()
        metrics.update(
            loss=loss.item(),
            entropy=masked_mean(entropy, mask).item(),
            clip_frac=masked_mean(clipped.float(), mask).item(),
            logprob_gap=masked_mean(gap, mask).item(),
        )
        return loss, metrics

    # -- weights -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (None elsewhere); every rank must call (ZeRO-3 gathers)."""
        state = self.trainer.full_state_dict()
        return state if self.rank == 0 else None

    def init_weight_group(self, master_addr: str, master_port: int, world_size: int, backend: str) -> None:
        from rlpost.weight_sync import create_weight_group

        if self.rank == 0:
            self.weight_group = create_weight_group(master_addr, master_port, 0, world_size, backend)

    def weight_specs(self):
        from rlpost.weight_sync import weight_specs

        state = self.trainer.full_state_dict()
        return weight_specs(state) if self.rank == 0 else None

    def broadcast_weights(self) -> float:
        """Rank 0 broadcasts the current weights to the rollout workers' group."""
        from rlpost.weight_sync import broadcast_weights

        t0 = time.perf_counter()
        state = self.trainer.full_state_dict()
        if self.rank == 0:
            broadcast_weights(self.weight_group, state)
        return time.perf_counter() - t0

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, run_dir: str, step: int, client_state: dict) -> str:
        return str(self.trainer.save_checkpoint(run_dir, step, self.tokenizer, client_state))

    def load_latest(self, run_dir: str) -> dict | None:
        return self.trainer.load_latest(run_dir)

    def save_hf(self, path: str) -> None:
        self.trainer.save_hf(path, self.tokenizer)
