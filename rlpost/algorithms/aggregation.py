"""Reducing per-token losses to a scalar.

How the token losses are averaged changes what the gradient optimises, so the
choice is explicit:

- "token-mean": sum over all valid tokens / number of valid tokens. Every token
  weighs the same, so long answers are not under-weighted (DAPO, Yu et al. 2025,
  "token-level policy gradient loss").
- "seq-mean-token-mean": average each sequence over its tokens, then average
  sequences (the original GRPO objective, Shao et al. 2024). Tokens of long
  sequences weigh less, which Dr. GRPO identifies as a length bias.
- "seq-mean-token-sum-norm": sum of token losses / (B * max_len) with a constant
  max_len (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training").
  A constant normaliser removes the length bias without making the gradient
  scale depend on how many tokens happened to be valid.
"""

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_mean(x, mask, dim=None):
    """Mean of x over positions where mask is True (over all of x, or along dim).

    Masked positions are replaced rather than multiplied by zero, so NaN/inf
    there (padding garbage, missing rewards) cannot leak in. An empty selection
    gives 0, not NaN.
    """
    mask = mask.bool()
    total = torch.where(mask, x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / mask.sum().clamp(min=1)
    return total.sum(dim) / mask.sum(dim).clamp(min=1)


def aggregate_loss(per_token_loss, mask, mode, max_len=None):
    """Reduce per_token_loss[B, T] to a scalar over the tokens where mask[B, T] is True.

    See the module docstring for the modes. In "seq-mean-token-mean", sequences
    with no valid token (e.g. samples the caller excluded) are left out of the
    average over sequences instead of counting as zero. "seq-mean-token-sum-norm"
    needs max_len (the generation length limit, a constant) and divides by
    B = per_token_loss.shape[0], all rows, on purpose: the normaliser must not
    depend on the batch contents. No mode returns NaN when nothing is valid.
    """
    mask = mask.bool()
    if mode == "token-mean":
        return masked_mean(per_token_loss, mask)
    if mode == "seq-mean-token-mean":
        seq_means = masked_mean(per_token_loss, mask, dim=-1)
        return masked_mean(seq_means, mask.any(dim=-1))
    if mode == "seq-mean-token-sum-norm":
        if max_len is None:
            raise ValueError("loss aggregation 'seq-mean-token-sum-norm' needs max_len")
        total = torch.where(mask, per_token_loss, torch.zeros_like(per_token_loss)).sum()
        return total / (per_token_loss.shape[0] * max_len)
    raise ValueError(f"unknown loss aggregation mode {mode!r}; valid modes: {', '.join(LOSS_AGG_MODES)}")
