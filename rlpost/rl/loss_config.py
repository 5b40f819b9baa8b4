"""The policy loss's config (section `loss`): which loss, its clip ranges and aggregation, the KL
penalty, the update's batching, and the correction of tokens sampled by another policy. The
learner (rlpost/rl/learner.py) reads it; the functions it names are in rlpost/algorithms."""

from dataclasses import dataclass

from rlpost.algorithms import KL_ESTIMATORS, LOSS_AGG_MODES, OFF_POLICY_CORRECTIONS, POLICY_LOSSES
from rlpost.config import ConfigError, doc


@dataclass
class PolicyLossConfig:
    policy_loss: str = doc(
        "Policy loss: 'ppo_clip' (PPO's clipped token ratio, clip_low/clip_high), 'gspo' (Zheng et al. 2025, "
        "GSPO: the clip on the sequence's geometric-mean ratio, gspo_clip_low/gspo_clip_high) or 'cispo' "
        "(MiniMax-M1 2025: REINFORCE weighted by the token ratio clipped to clip_low/clip_high, no token "
        "loses its gradient; the paper sets no lower bound, i.e. clip_low 1.0).",
        "ppo_clip",
    )
    clip_low: float = doc("PPO ratio clip below 1 (ratio >= 1 - clip_low); CISPO's weight clip too.", 0.2)
    clip_high: float = doc(
        "PPO ratio clip above 1; > clip_low is DAPO's clip-higher (Yu et al. 2025); CISPO's weight clip too.", 0.2
    )
    gspo_clip_low: float = doc(
        "GSPO's clip of the sequence ratio below 1: sequence ratios stay near 1, so their range is far smaller "
        "than a token's (the paper's 3e-4).",
        3e-4,
    )
    gspo_clip_high: float = doc("GSPO's clip of the sequence ratio above 1 (the paper's 4e-4).", 4e-4)
    loss_agg: str = doc(
        "'token-mean' (DAPO), 'seq-mean-token-mean' (GRPO) or 'seq-mean-token-sum-norm' (Dr. GRPO, normalised "
        "by the rollout's max_new_tokens). Aggregated over the whole mini-batch on all learner ranks.",
        "token-mean",
    )
    kl_coef: float = doc("Weight of the KL penalty to the frozen reference policy; 0 loads no reference model.", 0.0)
    kl_estimator: str = doc("KL estimator: 'k1', 'k2' or 'k3' (Schulman's low-variance estimator).", "k3")
    ppo_epochs: int = doc("Passes over each batch of trajectories.", 1)
    mini_batches: int = doc("Optimizer steps per epoch (the batch is split into this many mini-batches).", 1)
    micro_batch_size: int = doc("Sequences per forward/backward (gradient accumulation within a mini-batch).", 64)
    tis_cap: float = doc(
        "Truncated importance sampling (Yao et al. 2025, 'Your Efficient RL Framework Secretly Brings You "
        "Off-Policy RL Training'): each token's loss is weighted by min(π_old / π_sampler, tis_cap), where "
        "π_sampler is the probability vLLM sampled the token with; corrects samples drawn by stale weights "
        "(sync.every > 1) or a mismatched engine; 0 disables. Used by loss.correction 'tis' only.",
        0.0,
    )
    correction: str | None = doc(
        "Off-policy correction of tokens sampled by π_sampler rather than π_old, by their ratio π_old / "
        "π_sampler: 'none'; 'tis' (weight min(ratio, tis_cap)); 'token_mask' (IcePop: weight 0 for tokens "
        "whose ratio leaves correction_band, 1 for the others); 'sequence_mask' (the same test on the "
        "sequence's geometric-mean ratio drops the whole sequence). null: 'tis' when tis_cap > 0, else 'none'.",
        None,
    )
    correction_band: list[float] = doc(
        "[low, high]: the ratios π_old / π_sampler that 'token_mask' and 'sequence_mask' keep (edges included).",
        [0.5, 2.0],
    )

    def clip_range(self) -> tuple[float, float]:
        """(clip_low, clip_high) of the chosen policy loss."""
        if self.policy_loss == "gspo":
            return self.gspo_clip_low, self.gspo_clip_high
        return self.clip_low, self.clip_high

    def resolved_correction(self) -> str:
        """The off-policy correction in force: `correction`, or its default from tis_cap."""
        if self.correction is not None:
            return self.correction
        return "tis" if self.tis_cap > 0 else "none"

    def validate(self):
        if self.policy_loss not in POLICY_LOSSES:
            raise ConfigError(f"loss.policy_loss: {self.policy_loss!r} is not one of {list(POLICY_LOSSES)}")
        for key in ("clip_low", "clip_high", "gspo_clip_low", "gspo_clip_high"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key}: {getattr(self, key)} must be >= 0")
        if self.loss_agg not in LOSS_AGG_MODES:
            raise ConfigError(f"loss.loss_agg: {self.loss_agg!r} is not one of {list(LOSS_AGG_MODES)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"loss.kl_estimator: {self.kl_estimator!r} is not one of {list(KL_ESTIMATORS)}")
        if self.tis_cap < 0:
            raise ConfigError(f"loss.tis_cap: {self.tis_cap} must be >= 0 (0 disables)")
        self._validate_correction()

    def _validate_correction(self):
        correction = self.resolved_correction()
        if correction not in OFF_POLICY_CORRECTIONS:
            raise ConfigError(
                f"loss.correction: {correction!r} is not one of {list(OFF_POLICY_CORRECTIONS)} "
                "(or null: 'tis' when loss.tis_cap > 0, else 'none')"
            )
        if correction == "tis" and self.tis_cap <= 0:
            raise ConfigError("loss.correction: 'tis' needs loss.tis_cap > 0 (the cap of the importance weights)")
        if correction != "tis" and self.tis_cap > 0:
            raise ConfigError(
                f"loss.tis_cap: {self.tis_cap} caps the 'tis' correction only; loss.correction is {correction!r}"
            )
        band = self.correction_band
        if len(band) != 2 or not 0 < band[0] <= 1 <= band[1]:
            raise ConfigError(f"loss.correction_band: {band} must be [low, high] with 0 < low <= 1 <= high")
