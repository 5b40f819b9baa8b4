"""PPO-style surrogate losses for the policy and the critic, and the importance
weights that correct for samples drawn by a different policy."""

import math

import torch


def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_low=0.2, clip_high=0.2):
    """Per-token PPO clipped surrogate loss with an asymmetric clip range.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms":
        ratio = exp(logprobs - old_logprobs)
        loss  = -min(ratio * A, clamp(ratio, 1 - clip_low, 1 + clip_high) * A)
    Separate low/high bounds are DAPO's "clip-higher" (Yu et al. 2025): a larger
    clip_high lets low-probability tokens grow more, which counters entropy
    collapse.

    logprobs, old_logprobs: [B, T]; advantages: [B] (one per sequence, broadcast
    over tokens) or [B, T]. Returns (per_token_loss[B, T], clipped[B, T]) where
    clipped marks tokens whose clipped branch was strictly smaller, i.e. tokens
    that get no gradient (for a clip-fraction metric). Masking and averaging are
    the caller's job (see aggregate_loss).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    # Bound the log-ratio so a stale or diverged token cannot overflow exp() to inf
    # (inf * 0 advantage would be NaN); a ratio of e^20 is clipped anyway.
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    unclipped = ratio * advantages
    clipped_obj = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped_obj), clipped_obj < unclipped


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


@torch.no_grad()
def truncated_importance_weights(old_logprobs, sampling_logprobs, cap):
    """Per-token truncated importance weights min(pi_old / pi_sampler, cap), detached.

    Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy
    RL Training": the rollout engine samples with weights that may be stale or
    computed by different kernels than the learner's, so the tokens come from
    pi_sampler, not from pi_old that the PPO ratio assumes. Weighting each token's
    loss by pi_old / pi_sampler corrects that; truncating at `cap` bounds the
    variance (the weight is a constant factor, no gradient flows through it).

    old_logprobs, sampling_logprobs: [B, T] (any matching shape); cap > 0. The
    ratio is capped in log space, so garbage in masked positions cannot overflow
    to inf (an inf weight times a zero mask gradient would be NaN).
    """
    return torch.exp((old_logprobs - sampling_logprobs).clamp(max=math.log(cap)))
