"""PPO with a critic, as in RLHF (Ziegler et al. 2019; Ouyang et al. 2022): the reward of
each completion token, advantage whitening, the adaptive KL coefficient and the critic's
explained variance. GAE and the clipped value loss are in advantages.py and policy_loss.py.

All [B, T] tensors are laid out like the learner's logprob columns (column t scores token
t + 1); `mask` marks the completion tokens the policy sampled (tool output is 0).
"""

import math

import torch

from .aggregation import masked_mean


def token_rewards(kl, scores, mask, kl_coef):
    """Per-token rewards: -kl_coef * kl on every masked token, plus the sequence's score on its
    last masked token (the reward model judges the whole completion once it is finished).

    kl: [B, T] per-token KL estimates (policy vs reference); scores: [B]; mask: [B, T] with at
    least one True per row. Unmasked columns are 0."""
    mask = mask.bool()
    rewards = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    columns = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask, columns, -1).max(dim=1).values
    if (last < 0).any():
        raise ValueError("every row needs at least one masked token to carry its score")
    rewards[torch.arange(mask.shape[0]), last] += scores.to(rewards.dtype)
    return rewards


@torch.no_grad()
def masked_whiten(x, mask, shift_mean=True, eps=1e-8):
    """(x - mean) / std over the masked entries of the whole batch (0 elsewhere); with
    shift_mean=False the mean is added back, so only the scale changes. The std is the
    population std."""
    mask = mask.bool()
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(out))


def explained_variance(values, returns, mask):
    """1 - Var(returns - values) / Var(returns) over the masked tokens: 1 is a perfect critic, 0
    one no better than a constant, below 0 worse than one. NaN when the returns are constant."""
    mask = mask.bool()
    r, v = returns[mask].double(), values[mask].double()
    var = r.var(correction=0)
    return math.nan if var == 0 else float(1 - (r - v).var(correction=0) / var)


def adaptive_kl_coef(coef, kl, target, horizon, batch_size):
    """Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences"), the adaptive
    KL controller: the coefficient moves towards keeping the observed KL at `target`:
        error = clip(kl / target - 1, -0.2, 0.2);  coef *= 1 + error * batch_size / horizon
    `kl` is the batch's mean KL per sequence; `batch_size` the samples it came from."""
    error = max(-0.2, min(0.2, kl / target - 1))
    return coef * (1 + error * batch_size / horizon)
