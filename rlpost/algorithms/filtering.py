"""Sample selection from DAPO (Yu et al. 2025, "DAPO: An
Open-Source LLM Reinforcement Learning System at Scale")."""

import torch


def zero_variance_groups(rewards, group_size):
    """BoolTensor[num_groups]: True where all valid (non-NaN) rewards of the group are equal.

    Such a group has zero advantage for every member under group baselines, so it
    carries no learning signal; DAPO's dynamic sampling drops these groups and
    samples more. Groups with fewer than two valid rewards count as zero-variance.
    rewards are laid out group-contiguously (sample i in group i // group_size).
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, got shape {tuple(rewards.shape)}"
        )
    r = rewards.reshape(-1, group_size)
    valid = ~torch.isnan(r)
    inf = torch.full_like(r, float("inf"))
    hi = torch.where(valid, r, -inf).amax(dim=1)
    lo = torch.where(valid, r, inf).amin(dim=1)
    # With no valid member, hi = -inf < lo = +inf, which also reads as "no spread".
    return ~(hi > lo)


def truncation_mask(finish_reasons):
    """BoolTensor[B]: True for samples cut off by the length limit (finish reason "length").

    Used for DAPO's overlong filtering: truncated samples can be masked out of
    the loss because their reward says nothing about the (unfinished) answer.
    """
    return torch.tensor([reason == "length" for reason in finish_reasons], dtype=torch.bool)
