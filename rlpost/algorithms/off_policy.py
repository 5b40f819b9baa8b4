"""Off-policy corrections: per-token weights for tokens sampled by a policy other than pi_old.

The rollout engine samples with weights that may be stale (asynchronous RL, sync.every > 1) or
computed by different kernels than the learner's, so a token comes from pi_sampler, not from the
pi_old that the policy loss assumes. Every correction compares the two through the per-token
ratio pi_old / pi_sampler, computed in log space from the learner's logprobs and the engine's
sampling logprobs, and returns

    (weights[B, T], corrected[B, T])

with `weights` detached (a constant factor of each token's loss, never a path for gradients) and
`corrected` marking the tokens it zeroed or capped. All take one signature,
(old_logprobs, sampling_logprobs, mask, cap, band): `cap` is the truncation of "tis", `band` the
(low, high) interval of the ratio that the masking corrections keep; `mask` marks the tokens of
the loss (only the sequence-level test reads it). Positions outside `mask` carry unspecified
values: the caller masks them.
"""

import math

import torch

from .aggregation import masked_mean


@torch.no_grad()
def no_correction(old_logprobs, sampling_logprobs, mask, cap, band):
    """Weight 1 everywhere: the loss trusts that the samples came from pi_old."""
    del sampling_logprobs, mask, cap, band  # nothing to correct
    return torch.ones_like(old_logprobs), torch.zeros_like(old_logprobs, dtype=torch.bool)


@torch.no_grad()
def truncated_importance_weights(old_logprobs, sampling_logprobs, mask, cap, band):
    """Per-token truncated importance weights min(pi_old / pi_sampler, cap).

    Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training":
    weighting each token's loss by pi_old / pi_sampler corrects for the sampler; truncating at
    `cap` (> 0) bounds the variance. The ratio is capped in log space, so garbage in masked
    positions cannot overflow to inf (an inf weight times a zero mask gradient would be NaN).
    `corrected` marks the tokens whose ratio exceeded the cap.
    """
    del mask, band  # a per-token weight, truncated rather than dropped
    log_ratio = old_logprobs - sampling_logprobs
    log_cap = math.log(cap)
    return torch.exp(log_ratio.clamp(max=log_cap)), log_ratio > log_cap


def _outside_band(log_ratio, band):
    low, high = band
    return (log_ratio < math.log(low)) | (log_ratio > math.log(high))


@torch.no_grad()
def token_mask_weights(old_logprobs, sampling_logprobs, mask, cap, band):
    """Weight 0 for tokens whose ratio pi_old / pi_sampler leaves [low, high], 1 for the others.

    IcePop (Ling Team 2025, "Every Step Evolves: Scaling Reinforcement Learning for Trillion-Scale
    Thinking Model") and veRL's token-level rollout rejection: a token the two policies disagree
    on by more than the band is noise, not signal, and is dropped from the gradient instead of
    being reweighted. The band's edges are kept.
    """
    del mask, cap  # a per-token test against the band
    dropped = _outside_band(old_logprobs - sampling_logprobs, band)
    return (~dropped).to(old_logprobs.dtype), dropped


@torch.no_grad()
def sequence_mask_weights(old_logprobs, sampling_logprobs, mask, cap, band):
    """Weight 0 for every token of a sequence whose geometric-mean ratio leaves [low, high].

    The geometric mean exp(mean over the sequence's masked tokens of log(pi_old / pi_sampler))
    judges the sequence as a whole (veRL's sequence-level rollout rejection), so one odd token
    does not drop a sequence, while a sequence sampled by a policy far from pi_old goes entirely.
    A sequence without masked tokens has ratio 1 and is kept.
    """
    del cap  # a test against the band
    sequence_log_ratio = masked_mean(old_logprobs - sampling_logprobs, mask, dim=-1)
    dropped = _outside_band(sequence_log_ratio, band).unsqueeze(-1).expand_as(old_logprobs)
    return (~dropped).to(old_logprobs.dtype), dropped


OFF_POLICY_CORRECTIONS = {
    "none": no_correction,
    "tis": truncated_importance_weights,
    "token_mask": token_mask_weights,
    "sequence_mask": sequence_mask_weights,
}
