"""What the learner (and PPO's critic) trains on: one `Trajectory` per sampled completion, and its
packed tensor layout.

    pack(trajectories, pad_id)      right-padded [B, T] ids and [B, T-1] per-token columns
    shard / unshard                 a rank's share of a step's samples, and back
    packed_logprobs(forward, ...)   per-token logprobs of a packed batch, micro-batch by micro-batch
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlpost.trainer import token_logprobs


@dataclass
class Trajectory:
    """One sampled completion, as the learner (and PPO's critic) trains on it. Every list is per
    completion token; the optional ones are filled by PPO before the update."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampling_logprobs: list[float]  # vLLM's logprob of each completion token
    completion_mask: list[int]  # 1 = sampled by the policy (trained), 0 = injected tool output
    advantages: list[float]  # GRPO/RLOO repeat the sequence's advantage; GAE gives each token its own
    old_logprobs: list[float] | None = None  # the learner's, before the update (else computed in `train`)
    values: list[float] | None = None  # the critic's, before its update
    returns: list[float] | None = None  # the critic's targets: advantages + values


# Per-token fields `pack` lays out as [B, T-1] columns; the optional ones only when every sample has them.
TOKEN_FIELDS = ("sampling_logprobs", "advantages", "old_logprobs", "values", "returns")


def pack(trajectories: list[Trajectory], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors aligned with `token_logprobs` (position t predicts token t+1).

    `input_ids` is [B, T]; `mask` and every per-token field present in all samples
    (`TOKEN_FIELDS`) are [B, T-1], where column len(prompt_ids) - 1 + j holds completion token
    j and every other column is 0; `last` is the column of each sample's last completion token."""
    width = max(len(t.prompt_ids) + len(t.completion_ids) for t in trajectories)
    n = len(trajectories)
    names = [f for f in TOKEN_FIELDS if all(getattr(t, f) is not None for t in trajectories)]
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    out = {"mask": torch.zeros((n, width - 1), dtype=torch.bool), **{f: torch.zeros((n, width - 1)) for f in names}}
    last = torch.zeros(n, dtype=torch.long)
    for i, t in enumerate(trajectories):
        if any(len(getattr(t, f)) != len(t.completion_ids) for f in ["completion_mask", *names]):
            raise ValueError(f"trajectory {i}: its per-completion-token lists differ in length")
        ids = t.prompt_ids + t.completion_ids
        input_ids[i, : len(ids)] = torch.tensor(ids)
        start = len(t.prompt_ids) - 1
        end = start + len(t.completion_ids)
        out["mask"][i, start:end] = torch.tensor(t.completion_mask, dtype=torch.bool)
        for f in names:
            out[f][i, start:end] = torch.tensor(getattr(t, f))
        last[i] = end - 1
    return {"input_ids": input_ids, **out, "last": last}


def unpack(values: torch.Tensor, batch: dict[str, torch.Tensor], trajectories: list[Trajectory]) -> list[list[float]]:
    """The completion-token columns of a packed [B, T-1] tensor, as one list per trajectory."""
    return [values[i, len(t.prompt_ids) - 1 : int(batch["last"][i]) + 1].tolist() for i, t in enumerate(trajectories)]


def shard(items: list, rank: int, world_size: int) -> list:
    """This rank's share of a step's samples: every world_size-th one."""
    return items[rank::world_size]


def unshard(per_rank: list[list]) -> list:
    """The inverse of `shard`: the ranks' lists interleaved back into sample order."""
    out = [None] * sum(len(part) for part in per_rank)
    for rank, part in enumerate(per_rank):
        out[rank :: len(per_rank)] = part
    return out


def length_sorted_parts(indices: torch.Tensor, last: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """`indices` sorted by sample length and cut into `parts` micro-batches of similar lengths, so
    each can be cut to its longest sample with little padding. Parts are empty when there are
    fewer samples than parts."""
    ordered = indices[last[indices].argsort(stable=True).to(indices.device)]
    return list(torch.tensor_split(ordered, parts))


@torch.no_grad()
def packed_logprobs(
    forward, batch: dict[str, torch.Tensor], micro_batch_size: int, temperature: float, passes: int = 0
) -> torch.Tensor:
    """`token_logprobs` of a packed batch under `forward` (input ids → logits), without gradients.

    Samples go through in micro-batches of similar lengths, each cut to its longest sample;
    columns past a sample's last completion token are 0 (they are never in the loss). `passes`
    (at least the micro-batches needed) sets the number of forward passes: ranks that must run
    in lockstep (ZeRO-3 gathers weights in every forward) fill theirs with discarded passes."""
    ids, last = batch["input_ids"], batch["last"]
    n = ids.shape[0]
    out = torch.zeros(n, ids.shape[1] - 1, device=ids.device)
    for idx in length_sorted_parts(torch.arange(n), last, max(passes, math.ceil(n / micro_batch_size))):
        if len(idx) == 0:
            forward(ids[:1, :2])
            continue
        width = int(last[idx].max()) + 1
        cut = ids[idx, : width + 1]
        out[idx, :width] = token_logprobs(forward(cut) / temperature, cut)
    return out
