"""Per-token estimators of KL(policy || reference) from samples of the policy.

With tokens sampled from the policy and log_ratio = logprobs - ref_logprobs
(log pi/pi_ref), the estimators of John Schulman's "Approximating KL
Divergence" (http://joschu.net/blog/kl-approx.html) are:

- "k1": log_ratio. Unbiased, high variance, can be negative per token.
- "k2": 0.5 * log_ratio^2. Biased but low variance, always >= 0.
- "k3": exp(-log_ratio) - (-log_ratio) - 1 = (r - 1) - log r with
  r = pi_ref/pi. Unbiased (E[r] = 1 under the policy), low variance and always
  >= 0 (log r <= r - 1); the estimator used by GRPO.
"""

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs, ref_logprobs, kind):
    """Per-token KL estimate of kind "k1", "k2" or "k3" (see the module docstring).

    logprobs / ref_logprobs are the log-probabilities of the sampled tokens under
    the policy and the reference model, any (matching) shape.
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; valid kinds: {', '.join(KL_ESTIMATORS)}")
