"""RL post-training algorithms as pure torch functions: advantages, policy and
value losses, importance weights, KL estimators, loss aggregation, sample
filtering, reward-model ranking losses and DPO losses."""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    drgrpo_advantages,
    gae_advantages,
    grpo_advantages,
    rloo_advantages,
)
from .aggregation import LOSS_AGG_MODES, aggregate_loss, loss_count, loss_sum, masked_mean
from .dpo import DPO_LOSSES, dpo_metrics, dpo_sigmoid_loss, ipo_loss, plackett_luce_dpo_loss, ranking_dpo_loss
from .filtering import truncation_mask, zero_variance_groups
from .kl import KL_ESTIMATORS, kl_penalty
from .off_policy import (
    OFF_POLICY_CORRECTIONS,
    no_correction,
    sequence_mask_weights,
    token_mask_weights,
    truncated_importance_weights,
)
from .policy_loss import POLICY_LOSSES, cispo_loss, gspo_loss, ppo_clip_loss, value_loss
from .ppo import adaptive_kl_coef, explained_variance, masked_whiten, token_rewards

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "DPO_LOSSES",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "OFF_POLICY_CORRECTIONS",
    "POLICY_LOSSES",
    "adaptive_kl_coef",
    "aggregate_loss",
    "cispo_loss",
    "dpo_metrics",
    "dpo_sigmoid_loss",
    "drgrpo_advantages",
    "explained_variance",
    "gae_advantages",
    "grpo_advantages",
    "gspo_loss",
    "ipo_loss",
    "kl_penalty",
    "loss_count",
    "loss_sum",
    "masked_mean",
    "masked_whiten",
    "no_correction",
    "plackett_luce_dpo_loss",
    "ppo_clip_loss",
    "ranking_dpo_loss",
    "rloo_advantages",
    "sequence_mask_weights",
    "token_mask_weights",
    "token_rewards",
    "truncated_importance_weights",
    "truncation_mask",
    "value_loss",
    "zero_variance_groups",
]
