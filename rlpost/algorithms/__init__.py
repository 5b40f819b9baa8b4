"""RL post-training algorithms as pure torch functions: advantages, policy and
value losses, importance weights, KL estimators, loss aggregation and sample
filtering."""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    drgrpo_advantages,
    gae_advantages,
    grpo_advantages,
    rloo_advantages,
)
from .aggregation import LOSS_AGG_MODES, aggregate_loss, loss_count, loss_sum, masked_mean
from .filtering import truncation_mask, zero_variance_groups
from .kl import KL_ESTIMATORS, kl_penalty
from .policy_loss import ppo_clip_loss, truncated_importance_weights, value_loss
from .ppo import adaptive_kl_coef, explained_variance, masked_whiten, token_rewards

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "adaptive_kl_coef",
    "aggregate_loss",
    "drgrpo_advantages",
    "explained_variance",
    "gae_advantages",
    "grpo_advantages",
    "kl_penalty",
    "loss_count",
    "loss_sum",
    "masked_mean",
    "masked_whiten",
    "ppo_clip_loss",
    "rloo_advantages",
    "token_rewards",
    "truncated_importance_weights",
    "truncation_mask",
    "value_loss",
    "zero_variance_groups",
]
