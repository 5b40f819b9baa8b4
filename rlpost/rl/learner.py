"""The RL learner: one DeepSpeed rank per Ray actor, training the policy on sampled trajectories.

Each rank receives the whole step's trajectories, keeps its own shard (every world_size-th
sample), and runs the policy-gradient update with the pure loss functions of
rlpost/algorithms. The learner trains on exactly the token ids vLLM sampled; injected tool
output tokens carry mask 0 and never enter the loss. Rank 0 also serves the weights to the
rollout workers (object store or broadcast, see rlpost/distributed/weight_sync.py).

The loss of each mini-batch is its aggregate (`loss.loss_agg`) over the whole mini-batch on all
ranks, whatever the number of ranks and micro-batches: every aggregation mode is a sum over
samples divided by a count that depends only on the mask (rlpost/algorithms/aggregation.py).
The ranks add up their counts once per mini-batch, and each micro-batch's sum is scaled by
world_size / that total, because DeepSpeed averages the accumulated gradients over the ranks.
"""

from __future__ import annotations

import math
import time

import torch

from rlpost.algorithms import OFF_POLICY_CORRECTIONS, POLICY_LOSSES, kl_penalty, loss_count, loss_sum
from rlpost.distributed.weight_sync import (
    broadcast_weights,
    create_weight_group,
    engine_dtype,
    plan_buckets,
    put_buckets,
    to_dtype,
    weight_specs,
)
from rlpost.model import load_model
from rlpost.rl.loss_config import PolicyLossConfig
from rlpost.rl.trajectory import Trajectory, length_sorted_parts, pack, packed_logprobs, shard, unpack
from rlpost.tokenizer import load_tokenizer
from rlpost.trainer import DeepSpeedConfig, DeepSpeedTrainer, OptimConfig, token_logprobs

# Token metrics reported as their maximum over micro-batches and ranks rather than a token mean.
MAX_METRICS = frozenset({"mismatch/ratio_max"})


def _masked_sum(x: torch.Tensor, mask: torch.Tensor) -> float:
    return torch.where(mask, x.float(), 0.0).sum().item()


class Learner:
    """One learner rank (a Ray actor). All ranks must receive every call of a step."""

    def __init__(
        self,
        model_path: str,
        optim: OptimConfig,
        deepspeed: DeepSpeedConfig,
        loss: PolicyLossConfig,
        *,
        rank: int,
        master_addr: str,
        master_port: int,
        total_steps: int,
        max_new_tokens: int,
        seed: int = 0,
        reference: bool = False,
        model=None,
    ):
        """`reference`: also load the frozen starting policy for `logprobs` (PPO's KL reward);
        it is loaded anyway when the loss has a KL term. `model`: train this prebuilt model
        instead of the causal LM at `model_path` (PPO's critic)."""
        self.rank, self.world_size, self.loss_cfg = rank, deepspeed.world_size, loss
        # The 'seq-mean-token-sum-norm' normaliser: the generation length limit (Dr. GRPO).
        self.max_new_tokens = max_new_tokens
        self.trainer = DeepSpeedTrainer(
            model_path,
            optim,
            deepspeed,
            total_steps=total_steps,
            micro_batch_size=loss.micro_batch_size,
            rank=rank,
            master_addr=master_addr,
            master_port=master_port,
            seed=seed,
            model=model,
        )
        self.tokenizer = load_tokenizer(model_path)
        self.reference = None
        if loss.kl_coef > 0 or reference:  # the frozen starting policy; not loaded when nothing uses it
            self.reference = load_model(model_path, "bfloat16" if self.trainer.bf16 else "float32")
            self.reference.to(self.trainer.engine.device).eval()
            self.reference.requires_grad_(False)
        # Token-weighted means reported by `train`, summed over micro-batches and ranks (those in
        # MAX_METRICS: maxima over them). The mismatch between the sampler and the learner is
        # logged whether or not a correction is on.
        self.token_metrics = ["entropy", "clip_frac", "approx_kl", "logprob_gap"]
        self.token_metrics += ["mismatch/kl", "mismatch/ratio_max", "mismatch/masked_frac"]
        if loss.kl_coef > 0:
            self.token_metrics.append("kl")
        if loss.resolved_correction() == "tis":
            self.token_metrics += ["tis/weight_mean", "tis/capped_frac"]
        self.weight_group = None
        self.weight_specs = None

    # -- the update ----------------------------------------------------------------------------
    def train(self, trajectories: list[Trajectory], temperature: float = 1.0) -> dict:
        """Policy-gradient update (`loss.policy_loss`, `loss.correction`) on this rank's shard;
        returns metrics.

        `temperature` is the sampling temperature: the policy being trained is the tempered one,
        whose logprobs are what vLLM reports for the sampled tokens. `loss` is the mean over
        optimizer steps of the mini-batch's global aggregate; the token metrics are means over all
        ranks' tokens (`mismatch/ratio_max`: the maximum over them); `grad_norm` is DeepSpeed's
        global norm; `time/*` are this rank's."""
        cfg = self.loss_cfg
        if len(trajectories) < self.world_size:
            raise ValueError(f"{len(trajectories)} trajectories for {self.world_size} learner ranks")
        mine = shard(trajectories, self.rank, self.world_size)
        batch = self.trainer.to_device(pack(mine, self.tokenizer.pad_token_id))
        # Every gradient reduction (and, under ZeRO-3, every forward) is a collective, so all ranks
        # run as many micro-batches as the largest shard needs; the shard sizes are known locally.
        largest_shard = math.ceil(len(trajectories) / self.world_size)
        timings = {}
        t0 = time.perf_counter()
        ref_lp = None
        if cfg.kl_coef > 0:
            ref_lp = packed_logprobs(self._reference_logits, batch, cfg.micro_batch_size, temperature)
        timings["time/reference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # With one update per batch the "old" policy is the current one: its logprobs are the
        # detached logprobs of the same forward pass. Otherwise they come with the trajectories
        # (PPO computed them for its KL reward) or are computed once up front.
        old_lp = batch.get("old_logprobs")
        if old_lp is None and cfg.ppo_epochs * cfg.mini_batches > 1:
            self.trainer.train_mode(False)
            passes = math.ceil(largest_shard / cfg.micro_batch_size)
            old_lp = packed_logprobs(self.trainer.logits, batch, cfg.micro_batch_size, temperature, passes)
        out = self._update(batch, largest_shard, old_lp, ref_lp, temperature)
        timings["time/train"] = time.perf_counter() - t0
        out["train_tokens"] = sum(sum(t.completion_mask) for t in trajectories)
        return {**out, **timings}

    def _update(self, batch, largest_shard, old_lp, ref_lp, temperature) -> dict:
        """`loss.ppo_epochs` passes of `loss.mini_batches` optimizer steps over this rank's packed
        shard; returns the loss, grad norm, learning rate and token metrics over all ranks."""
        cfg = self.loss_cfg
        largest_minis = [len(m) for m in torch.tensor_split(torch.arange(largest_shard), cfg.mini_batches)]
        sums = dict.fromkeys(["tokens", *self.token_metrics], 0.0)
        step_sums, step_counts, grad_norms = [], [], []
        self.trainer.train_mode()
        for epoch in range(cfg.ppo_epochs):
            samples = len(batch["last"])
            order = torch.randperm(samples) if epoch > 0 else torch.arange(samples)
            for mini, largest_mini in zip(torch.tensor_split(order, cfg.mini_batches), largest_minis):
                if largest_mini == 0:
                    continue  # empty on every rank
                parts = length_sorted_parts(mini, batch["last"], math.ceil(largest_mini / cfg.micro_batch_size))
                step_sum, count = self._optimizer_step(batch, mini, parts, old_lp, ref_lp, temperature, sums)
                step_sums.append(step_sum)
                step_counts.append(count)
                grad_norms.append(self.trainer.grad_norm())

        # One all-reduce for every reported sum, and one for the maxima.
        maxima = {k: sums.pop(k) for k in self.token_metrics if k in MAX_METRICS}
        totals = self.trainer.sum_over_ranks(torch.tensor([*step_sums, *sums.values()], dtype=torch.float64))
        step_losses = [s / max(c, 1.0) for s, c in zip(totals[: len(step_sums)].tolist(), step_counts)]
        token_sums = dict(zip(sums, totals[len(step_sums) :].tolist()))
        tokens = max(token_sums.pop("tokens"), 1.0)
        out = {k: v / tokens for k, v in token_sums.items()}
        if maxima:
            out.update(
                zip(maxima, self._max_over_ranks(torch.tensor([*maxima.values()], dtype=torch.float64)).tolist())
            )
        out["loss"] = sum(step_losses) / len(step_losses) if step_losses else math.nan
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        out["lr"] = self.trainer.lr()
        return out

    def _max_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum of a small tensor over all ranks (a new CPU tensor); every rank must call."""
        reduced = values.to(self.trainer.engine.device, copy=True)  # NCCL reduces GPU tensors only
        torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.MAX)
        return reduced.cpu()

    def _optimizer_step(self, batch, mini, parts, old_lp, ref_lp, temperature, sums) -> tuple[float, float]:
        """One optimizer step on the mini-batch `mini` (indices into this rank's shard), split
        into the micro-batches `parts`; adds the token metrics' sums into `sums` (and takes the
        maximum for those in MAX_METRICS, whose 0 start is below any ratio). Returns this
        rank's loss sum and the count over all ranks that the mini-batch's loss is divided by."""
        cfg = self.loss_cfg
        count = self.trainer.sum_over_ranks(loss_count(batch["mask"][mini], cfg.loss_agg, self.max_new_tokens))
        # DeepSpeed averages gradients over the ranks: world_size / count makes that average the
        # gradient of the sum over all ranks divided by the global count.
        scale = self.world_size / count.clamp(min=1)
        step_sum = 0.0
        for j, idx in enumerate(parts):
            # A rank with fewer samples than parts takes part with a zero-weighted pass.
            filler = len(idx) == 0
            per_token, mask, stats = self._micro_batch_loss(
                batch, torch.tensor([0]) if filler else idx, old_lp, ref_lp, temperature
            )
            part_sum = loss_sum(per_token, mask, cfg.loss_agg)
            self.trainer.backward(part_sum * (0.0 if filler else scale), last_micro_batch=j == len(parts) - 1)
            if not filler:
                step_sum += part_sum.item()
                for k, v in stats.items():
                    sums[k] = max(sums[k], v) if k in MAX_METRICS else sums[k] + v
        return step_sum, count.item()

    def _micro_batch_loss(self, batch, idx, old_lp, ref_lp, temperature):
        """Per-token loss and mask of the samples `idx` (cut to the longest), and masked sums of
        the token metrics."""
        cfg = self.loss_cfg
        width = int(batch["last"][idx].max()) + 1  # logprob columns; the rest is padding
        input_ids = batch["input_ids"][idx, : width + 1]
        mask = batch["mask"][idx, :width]
        sampling = batch["sampling_logprobs"][idx, :width]
        logits = self.trainer.logits(input_ids) / temperature
        logprobs = token_logprobs(logits, input_ids)
        old = old_lp[idx, :width] if old_lp is not None else logprobs.detach()
        advantages = batch["advantages"][idx, :width]
        per_token, clipped = POLICY_LOSSES[cfg.policy_loss](logprobs, old, advantages, *cfg.clip_range(), mask=mask)
        stats = {
            "tokens": mask.sum().item(),
            "clip_frac": _masked_sum(clipped, mask),
            # how far this update has moved the policy from the sampling one (k2 estimate)
            "approx_kl": _masked_sum(0.5 * (logprobs.detach() - old) ** 2, mask),
        }
        correction = cfg.resolved_correction()
        weights, corrected = OFF_POLICY_CORRECTIONS[correction](
            old, sampling, mask, cap=cfg.tis_cap, band=cfg.correction_band
        )
        if correction != "none":
            per_token = per_token * weights
        stats["mismatch/masked_frac"] = _masked_sum(corrected, mask)
        if correction == "tis":
            stats["tis/weight_mean"] = _masked_sum(weights, mask)
            stats["tis/capped_frac"] = _masked_sum(corrected, mask)
        if cfg.kl_coef > 0:
            kl = kl_penalty(logprobs, ref_lp[idx, :width], cfg.kl_estimator)
            per_token = per_token + cfg.kl_coef * kl
            stats["kl"] = _masked_sum(kl.detach(), mask)
        with torch.no_grad():
            token_logits = logits[:, :-1].float()
            entropy = torch.logsumexp(token_logits, -1) - (token_logits.softmax(-1) * token_logits).sum(-1)
            stats["entropy"] = _masked_sum(entropy, mask)
            # Training/inference mismatch: how far the learner's probability of each sampled
            # token is from the probability vLLM sampled it with.
            stats["logprob_gap"] = _masked_sum((logprobs.detach() - sampling).exp().sub(1).abs(), mask)
            # The sampler/learner mismatch the corrections act on: k3 estimate of KL(π_sampler ‖ π_old)
            # (the tokens are π_sampler's samples) and the largest ratio π_old / π_sampler, in float64
            # so a stale token's ratio stays finite (an empty mask gives exp(-inf) = 0).
            stats["mismatch/kl"] = _masked_sum(kl_penalty(sampling, old, "k3"), mask)
            log_ratio = torch.where(mask, (old - sampling).double(), -math.inf)
            stats["mismatch/ratio_max"] = log_ratio.max().exp().item()
        return per_token, mask, stats

    def _reference_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.reference(input_ids=input_ids, use_cache=False).logits

    @torch.no_grad()
    def logprobs(self, trajectories: list[Trajectory], temperature: float = 1.0) -> tuple[list, list | None]:
        """This rank's shard's per-token logprobs under the current policy and under the reference
        (None without one), one list per trajectory; `unshard` the ranks' results. Every rank
        must call (ZeRO-3 gathers weights in every forward)."""
        mine = shard(trajectories, self.rank, self.world_size)
        batch = self.trainer.to_device(pack(mine, self.tokenizer.pad_token_id))
        size = self.loss_cfg.micro_batch_size
        passes = math.ceil(math.ceil(len(trajectories) / self.world_size) / size)
        self.trainer.train_mode(False)
        policy = packed_logprobs(self.trainer.logits, batch, size, temperature, passes)
        reference = None
        if self.reference is not None:
            reference = unpack(packed_logprobs(self._reference_logits, batch, size, temperature), batch, mine)
        return unpack(policy, batch, mine), reference

    # -- weights -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (None elsewhere); every rank must call (ZeRO-3 gathers)."""
        state = self.trainer.full_state_dict()
        return state if self.rank == 0 else None

    def init_weight_sync(self, dtype: str) -> list | None:
        """Plan every weight sync once: the names and shapes of the weights to send, in the
        engines' dtype (`dtype` is vllm.dtype, resolved as the engines resolve it), and their
        buckets. Every rank must call (ZeRO-3 gathers). Returns the specs on rank 0 (None
        elsewhere): the receivers of a broadcast need them, and they never change."""
        with self.trainer.gathered_weights() as weights:
            specs = weight_specs(weights, to_dtype(engine_dtype(dtype)))
        if self.rank != 0:
            return None
        self.weight_specs = specs
        self.weight_buckets = plan_buckets(specs)
        return specs

    def put_weights(self) -> list | None:
        """Rank 0 puts the current weights into Ray's object store, one object per bucket in the
        engines' dtype, and returns only their refs (None elsewhere): the bytes go from this
        process to the engines without passing through the driver. Every rank must call (ZeRO-3
        gathers)."""
        with self.trainer.gathered_weights() as weights:
            if self.rank != 0:
                return None
            if self.weight_specs is None:
                raise RuntimeError("put_weights needs init_weight_sync first (it plans the buckets)")
            return put_buckets(weights, self.weight_buckets)

    def init_weight_group(self, master_addr: str, master_port: int, world_size: int, backend: str) -> None:
        """Rank 0 joins the rollout workers' weight-broadcast group (the other ranks have no part
        in it); the rollout workers must be joining at the same time."""
        if self.rank == 0:
            self.weight_group = create_weight_group(master_addr, master_port, 0, world_size, backend)

    def broadcast_weights(self) -> float:
        """Rank 0 broadcasts the current weights to the rollout workers' group, bucket by bucket
        in the engines' dtype, from one gather; every rank must call (ZeRO-3 gathers). Returns
        seconds."""
        t0 = time.perf_counter()
        with self.trainer.gathered_weights() as weights:
            if self.rank == 0:
                if self.weight_specs is None:
                    raise RuntimeError("broadcast_weights needs init_weight_sync first (it plans the buckets)")
                broadcast_weights(self.weight_group, weights, self.weight_specs)
        return time.perf_counter() - t0

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, run_dir: str, step: int, client_state: dict) -> str:
        return str(self.trainer.save_checkpoint(run_dir, step, self.tokenizer, client_state))

    def load_latest(self, run_dir: str, step: int | None = None) -> dict | None:
        return self.trainer.load_latest(run_dir, step)

    def save_hf(self, path: str) -> None:
        self.trainer.save_hf(path, self.tokenizer)
