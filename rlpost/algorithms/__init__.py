"""RL post-training algorithms as pure torch functions: advantages, policy and
value losses, KL estimators, loss aggregation and sample filtering."""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    drgrpo_advantages,
    gae_advantages,
    grpo_advantages,
    rloo_advantages,
)
from .aggregation import LOSS_AGG_MODES, aggregate_loss, masked_mean
from .filtering import overlong_penalty, truncation_mask, zero_variance_groups
from .kl import KL_ESTIMATORS, kl_penalty
from .policy_loss import ppo_clip_loss, value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "aggregate_loss",
    "drgrpo_advantages",
    "gae_advantages",
    "grpo_advantages",
    "kl_penalty",
    "masked_mean",
    "overlong_penalty",
    "ppo_clip_loss",
    "rloo_advantages",
    "truncation_mask",
    "value_loss",
    "zero_variance_groups",
]
