"""Surrogate losses for the policy (PPO-clip, GSPO, CISPO: the POLICY_LOSSES registry, one
signature) and PPO's clipped value loss for the critic. The weights that correct for samples
drawn by another policy are in off_policy.py."""

import torch

from .aggregation import masked_mean


def _per_token(advantages):
    """Advantages [B] (one per sequence) broadcast over tokens, or [B, T] as they are."""
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def _clipped_surrogate(ratio, advantages, clip_low, clip_high):
    """-min(ratio * A, clamp(ratio, 1 - clip_low, 1 + clip_high) * A) and the tokens whose clipped
    branch was strictly smaller (they get no gradient)."""
    unclipped = ratio * advantages
    clipped_obj = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped_obj), clipped_obj < unclipped


def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_low=0.2, clip_high=0.2, mask=None):
    """Per-token PPO clipped surrogate loss with an asymmetric clip range.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms":
        ratio = exp(logprobs - old_logprobs)
        loss  = -min(ratio * A, clamp(ratio, 1 - clip_low, 1 + clip_high) * A)
    Separate low/high bounds are DAPO's "clip-higher" (Yu et al. 2025): a larger
    clip_high lets low-probability tokens grow more, which counters entropy
    collapse.

    The signature of every POLICY_LOSSES entry: logprobs, old_logprobs: [B, T];
    advantages: [B] (one per sequence, broadcast over tokens) or [B, T]; mask:
    [B, T] tokens of the loss (this loss does not need it). Returns
    (per_token_loss[B, T], clipped[B, T]) where clipped marks tokens whose clipped
    branch was strictly smaller, i.e. tokens that get no gradient (for a
    clip-fraction metric). Masking and averaging are the caller's job (see
    aggregate_loss).
    """
    del mask  # every token's ratio stands alone
    # Bound the log-ratio so a stale or diverged token cannot overflow exp() to inf
    # (inf * 0 advantage would be NaN); a ratio of e^20 is clipped anyway.
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    return _clipped_surrogate(ratio, _per_token(advantages), clip_low, clip_high)


def gspo_loss(logprobs, old_logprobs, advantages, clip_low=3e-4, clip_high=4e-4, mask=None):
    """Per-token GSPO loss: PPO's clipped surrogate on a sequence-level ratio.

    Zheng et al. 2025, "Group Sequence Policy Optimization": the ratio of a sequence
    is the geometric mean of its token ratios,
        s_i = exp(mean over the sequence's masked tokens of (logprobs - old_logprobs)),
    so a single token's noise cannot clip or blow up the update of the others; the
    clip range is accordingly small (the paper uses 3e-4 below and 4e-4 above). This
    is the paper's GSPO-token form, s_i,t = sg[s_i] * pi_t / sg[pi_t]: its value is
    s_i on every token and its gradient flows per token, s_i * grad log pi_t, so
    per-token advantages work; with one advantage per sequence and a per-sequence
    token mean it is sequence-level GSPO exactly.

    Same signature and returns as ppo_clip_loss; `mask` picks the tokens of each
    sequence's mean (None: all of them). `clipped` marks tokens whose clipped branch
    won, which with a sequence advantage is every token of a clipped sequence.
    """
    if mask is None:
        mask = torch.ones_like(logprobs, dtype=torch.bool)
    sequence_log_ratio = masked_mean((logprobs - old_logprobs).detach(), mask, dim=-1)
    # exp(logprobs - sg[logprobs]) is 1 with the gradient of logprobs: pi_t / sg[pi_t].
    ratio = torch.exp(sequence_log_ratio.clamp(-20.0, 20.0)).unsqueeze(-1) * torch.exp(logprobs - logprobs.detach())
    return _clipped_surrogate(ratio, _per_token(advantages), clip_low, clip_high)


def cispo_loss(logprobs, old_logprobs, advantages, clip_low=0.2, clip_high=0.2, mask=None):
    """Per-token CISPO loss: REINFORCE weighted by a clipped, stop-gradient ratio.

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning
    Attention":
        loss = -sg(clamp(ratio, 1 - clip_low, 1 + clip_high)) * A * logprobs
    PPO's clip drops the gradient of a token whose ratio left the range, which on
    long reasoning takes away rare tokens ("however", "wait") that matter most;
    CISPO clips only the weight, so every token keeps a gradient, -weight * A. The
    paper sets no lower bound (clip_low >= 1 does that here) and tunes clip_high.

    Same signature and returns as ppo_clip_loss (`mask` unused); `clipped` marks
    tokens whose weight was clamped (they still get a gradient).
    """
    del mask  # every token's weight stands alone
    ratio = torch.exp((logprobs - old_logprobs).detach().clamp(-20.0, 20.0))
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return -weight * _per_token(advantages) * logprobs, weight != ratio


POLICY_LOSSES = {"ppo_clip": ppo_clip_loss, "gspo": gspo_loss, "cispo": cispo_loss}


def value_loss(values, old_values, returns, mask, clip=0.2):
    """Per-token clipped value loss for the PPO critic.

    The new value may move at most `clip` away from the value at rollout time,
    and the loss takes the worse (larger) of the clipped and unclipped squared
    errors, as in PPO's reference implementation (openai/baselines ppo2; see also
    Engstrom et al. 2020, "Implementation Matters in Deep RL"):
        0.5 * max((V - R)^2, (V_old + clamp(V - V_old, -clip, clip) - R)^2)
    All inputs are [B, T]; the result is [B, T] with 0 where mask is False.
    Reduce it with aggregate_loss.
    """
    values_clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2)
    return torch.where(mask.bool(), loss, torch.zeros_like(loss))
