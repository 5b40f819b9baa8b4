"""PPO's part of an RL step (recipes/ppo.py), after the shared collect_groups:

    sequence scores     ppo_scores(...)          the reward, clipped, minus the truncation penalty
    logprobs, values    learner and critic ranks the policy's and reference's logprobs, the critic's values
    targets             ppo_targets(...)         per-token KL reward + score → GAE → whitened advantages, returns
    update              critic ranks, then the learner ranks (after the critic's warm-up)
    KL coefficient      adaptive_kl_coef         fixed, or Ziegler et al.'s adaptive controller

Everything here but the actor calls in recipes/ppo.py is a pure function of tensors and lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlpost.algorithms import (
    KL_ESTIMATORS,
    adaptive_kl_coef,
    explained_variance,
    gae_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    token_rewards,
)
from rlpost.config import ConfigError, doc


@dataclass
class PPOAlgoConfig:
    gamma: float = doc("GAE discount over completion tokens.", 1.0)
    lam: float = doc("GAE λ (bias-variance trade-off of the advantage).", 0.95)
    kl_reward_coef: float = doc(
        "β of the per-token reward -β·KL(policy ‖ reference), PPO's only KL term; the start value when adaptive.", 0.05
    )
    kl_reward_estimator: str = doc("Per-token KL in the reward: 'k1' (log ratio, as InstructGPT), 'k2' or 'k3'.", "k1")
    adaptive_kl: bool = doc("Adapt β towards kl_target (Ziegler et al. 2019).", False)
    kl_target: float = doc("Target KL per sequence of the adaptive controller (nats).", 6.0)
    kl_horizon: int = doc("Horizon of the adaptive controller, in samples.", 10000)
    score_clip: float = doc("Clip each sequence's score to ±score_clip (0: no clip).", 0.0)
    truncated_penalty: float = doc(
        "Subtracted from the score of a completion cut at max_new_tokens (the 'EOS trick'; 0: none).", 0.0
    )
    whiten_advantages: bool = doc("Whiten advantages over the batch's tokens (mean 0, std 1).", True)

    def validate(self):
        if self.kl_reward_estimator not in KL_ESTIMATORS:
            raise ConfigError(
                f"algo.kl_reward_estimator: {self.kl_reward_estimator!r} is not one of {list(KL_ESTIMATORS)}"
            )
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"algo.gamma and algo.lam: must be within [0, 1], got {self.gamma} and {self.lam}")
        if self.kl_reward_coef < 0 or self.score_clip < 0:
            raise ConfigError("algo.kl_reward_coef and algo.score_clip: must be 0 or more")
        if self.adaptive_kl and (self.kl_target <= 0 or self.kl_horizon <= 0):
            raise ConfigError("algo.kl_target and algo.kl_horizon: must be above 0 with adaptive_kl")


def ppo_scores(rewards: list[float], truncated: list[bool], cfg: PPOAlgoConfig) -> torch.Tensor:
    """Each sequence's score: its reward clipped to ±score_clip, minus truncated_penalty when it
    was cut at the length limit."""
    scores = torch.tensor(rewards, dtype=torch.float32)
    if cfg.score_clip > 0:
        scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
    return scores - cfg.truncated_penalty * torch.tensor(truncated, dtype=torch.float32)


def padded(rows: list[list[float]]) -> torch.Tensor:
    """Per-token lists as a right-padded [B, L] float tensor (0 in the padding)."""
    out = torch.zeros(len(rows), max(map(len, rows)))
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def ppo_targets(policy_lp, reference_lp, values, masks, scores, cfg: PPOAlgoConfig, kl_coef: float):
    """Per-token advantages and returns of each sample, and what they are made of.

    Inputs are per completion token (lists of lists; `masks` 1 where the policy sampled the
    token), `scores` one per sample. The reward of each sampled token is -kl_coef·KL, plus the
    score on the last one; GAE runs over sampled tokens only (tool output is skipped), returns =
    advantages + values, and the advantages are whitened over the batch. Returns
    (advantages, returns, metrics) with lists per sample."""
    mask = padded(masks).bool()
    policy, reference, value = padded(policy_lp), padded(reference_lp), padded(values)
    kl = torch.where(mask, kl_penalty(policy, reference, cfg.kl_reward_estimator), 0.0)
    rewards = token_rewards(kl, scores, mask, kl_coef)
    advantages, returns = gae_advantages(rewards, value, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    k1 = torch.where(mask, policy - reference, 0.0)
    metrics = {
        "objective/scores": float(scores.mean()),
        "objective/non_score_reward": float((-kl_coef * kl).sum(1).mean()),
        "objective/kl": float(kl.sum(1).mean()),  # per sequence, by the reward's estimator
        "objective/kl_coef": kl_coef,
        "kl": float(masked_mean(k1, mask)),  # per token, k1: what the monitor watches (negative is a bad sign)
        "critic/values_mean": float(masked_mean(value, mask)),
        "critic/returns_mean": float(masked_mean(returns, mask)),
        "critic/explained_variance": explained_variance(value, returns, mask),
    }
    lengths = [len(m) for m in masks]
    per_sample = [advantages[i, :n].tolist() for i, n in enumerate(lengths)]
    return per_sample, [returns[i, :n].tolist() for i, n in enumerate(lengths)], metrics


def next_kl_coef(coef: float, kl_per_sequence: float, samples: int, cfg: PPOAlgoConfig) -> float:
    """β for the next step: unchanged, or moved by the adaptive controller."""
    if not cfg.adaptive_kl or not math.isfinite(kl_per_sequence):
        return coef
    return adaptive_kl_coef(coef, kl_per_sequence, cfg.kl_target, cfg.kl_horizon, samples)
