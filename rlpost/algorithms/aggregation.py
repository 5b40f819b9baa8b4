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

Every mode is a sum over samples divided by a count that depends only on the
mask: `aggregate_loss = loss_sum / loss_count`. Both parts add up over any split
of the batch, so a learner that splits a mini-batch into micro-batches and
ranks can sum the parts' `loss_count`s first and divide each part's `loss_sum`
by the total, and get exactly the aggregate of the whole mini-batch.
"""

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _check_mode(mode):
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; valid modes: {', '.join(LOSS_AGG_MODES)}")


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


def loss_sum(per_token_loss, mask, mode):
    """The numerator of `aggregate_loss`: a sum over the rows of per_token_loss[B, T].

    "token-mean" and "seq-mean-token-sum-norm" sum the valid tokens; in
    "seq-mean-token-mean" each token is weighted by 1 / (its sequence's valid
    token count), so a sequence contributes its mean. Masked positions never
    leak in, even when they hold NaN.
    """
    _check_mode(mode)
    mask = mask.bool()
    valid = torch.where(mask, per_token_loss, torch.zeros_like(per_token_loss))
    if mode == "seq-mean-token-mean":
        valid = valid / mask.sum(dim=-1, keepdim=True).clamp(min=1)
    return valid.sum()


def loss_count(mask, mode, max_len=None):
    """The denominator of `aggregate_loss` for mask[B, T], a float tensor (unclamped, may be 0).

    "token-mean": valid tokens; "seq-mean-token-mean": sequences with at least
    one valid token (sequences the caller excluded do not count as zeros);
    "seq-mean-token-sum-norm": B * max_len, all rows on purpose, with max_len
    the generation length limit, so the normaliser does not depend on the
    batch contents.
    """
    _check_mode(mode)
    mask = mask.bool()
    if mode == "token-mean":
        count = mask.sum()
    elif mode == "seq-mean-token-mean":
        count = mask.any(dim=-1).sum()
    else:
        if max_len is None:
            raise ValueError("loss aggregation 'seq-mean-token-sum-norm' needs max_len")
        count = torch.tensor(mask.shape[0] * max_len)
    return count.to(torch.float32)


def aggregate_loss(per_token_loss, mask, mode, max_len=None):
    """Reduce per_token_loss[B, T] to a scalar over the tokens where mask[B, T] is True.

    `loss_sum / loss_count` (see the module docstring for the modes).
    "seq-mean-token-sum-norm" needs max_len. No mode returns NaN when nothing
    is valid: the count is at least 1.
    """
    count = loss_count(mask, mode, max_len)
    return loss_sum(per_token_loss, mask, mode) / count.clamp(min=1)
