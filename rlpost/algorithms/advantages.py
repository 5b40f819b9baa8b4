"""Advantage estimators.

Group estimators (GRPO, Dr. GRPO, RLOO) take rewards as a 1-D tensor of length
num_groups * group_size laid out group-contiguously: sample i belongs to group
i // group_size (all samples of one prompt are adjacent).

Missing rewards: a NaN reward means "no reward for this sample" (e.g. the
verifier failed). Group statistics are computed over the valid (non-NaN)
members only, and NaN samples get advantage 0; the caller is expected to also
drop them from the loss mask. A group with too few valid members to form a
baseline (none, or one for RLOO) gets advantage 0 everywhere.
"""

import torch

from .aggregation import masked_mean


def _grouped(rewards, group_size):
    """View rewards as [num_groups, group_size] plus the mask of valid (non-NaN) entries."""
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, got shape {tuple(rewards.shape)}"
        )
    r = rewards.reshape(-1, group_size)
    return r, ~torch.isnan(r)


def grpo_advantages(rewards, group_size, eps=1e-6):
    """GRPO advantage: (r - group mean) / (group std + eps).

    Shao et al. 2024, "DeepSeekMath" (GRPO, outcome supervision): each reward is
    normalised by the mean and standard deviation of its group.

    The std is the population std (divide by the number of valid members, not
    n - 1). It is the std of the group itself rather than an estimate for a
    larger population, it stays defined for a group with a single valid member
    (advantage 0 instead of NaN), and it gives each non-constant group exactly
    unit RMS advantage. Implementations that use torch.std's default (sample
    std) give advantages smaller by a factor sqrt((n - 1) / n). A constant group
    has std 0 and advantage 0 thanks to eps.
    """
    r, valid = _grouped(rewards, group_size)
    mean = masked_mean(r, valid, dim=1).unsqueeze(1)
    std = masked_mean((r - mean) ** 2, valid, dim=1).sqrt().unsqueeze(1)
    adv = torch.where(valid, (r - mean) / (std + eps), torch.zeros_like(r))
    return adv.view(-1)


def drgrpo_advantages(rewards, group_size):
    """Dr. GRPO advantage: r - group mean, without dividing by the group std.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
    Perspective": the std division up-weights groups that are nearly all right or
    all wrong (question-difficulty bias), so it is dropped.
    """
    r, valid = _grouped(rewards, group_size)
    mean = masked_mean(r, valid, dim=1).unsqueeze(1)
    return torch.where(valid, r - mean, torch.zeros_like(r)).view(-1)


def rloo_advantages(rewards, group_size):
    """RLOO advantage: r_i minus the mean reward of the other members of its group.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
    Optimization for Learning from Human Feedback in LLMs" (Kool et al. 2019's
    leave-one-out baseline). Leaving the sample out keeps the baseline
    independent of it, so the gradient estimate stays unbiased.
    """
    r, valid = _grouped(rewards, group_size)
    n = valid.sum(dim=1, keepdim=True)
    total = torch.where(valid, r, torch.zeros_like(r)).sum(dim=1, keepdim=True)
    baseline = (total - r) / (n - 1).clamp(min=1)
    # A sample alone in its group has no "others" to form a baseline.
    has_baseline = valid & (n > 1)
    return torch.where(has_baseline, r - baseline, torch.zeros_like(r)).view(-1)


ADVANTAGE_ESTIMATORS = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
    "rloo": rloo_advantages,
}


# Advantages and returns are fixed targets: no gradient may flow into the critic through them.
@torch.no_grad()
def gae_advantages(token_rewards, values, mask, gamma, lam):
    """Generalised Advantage Estimation for PPO with a critic.

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
    Advantage Estimation":
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
    computed backwards over the valid tokens of each row (mask True). Masked
    positions are skipped entirely: their rewards and values (possibly garbage)
    are never read, the recursion links each valid token to the next valid one,
    and they get advantage and return 0. So padding may sit before, after or
    inside a sequence. The last valid token is terminal (V after it is 0).

    Inputs are [B, T]; returns (advantages[B, T], returns[B, T]) with
    returns = advantages + values on valid tokens (the critic's target).
    """
    mask = mask.bool()
    zeros = torch.zeros_like(values[:, 0])
    next_value, next_adv = zeros, zeros
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m, adv, zeros)
        # Only valid tokens move the recursion on; padding is transparent.
        next_adv = torch.where(m, adv, next_adv)
        next_value = torch.where(m, values[:, t], next_value)
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns
