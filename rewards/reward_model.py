"""A learned reward: the score of a reward model folder made by recipes/reward_model.py.

    rewards:
      functions:
        - name: reward_model
          timeout_s: 60
          kwargs: {path: runs/reward_model_tiny/model, batch_size: 32, normalize: true, device: cpu}

The model is loaded once per reward process (the first call) and kept; batches are scored
with the reward model's own chat template (`rlpost.rlhf.reward_model.RewardScorer`), so the policy
and the reward model may use different tokenizers. With `normalize` the score is
(score - mean) / std with the statistics of the reward card.

An ensemble — `paths: [rm_a, rm_b, ...]` in place of `path` (several reward models, or one
trained on other seeds or splits) — pays mean − λ·std of its members' (normalised) scores per
sample, λ = `penalty` (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization"; Eisenstein et al. 2023): where the members disagree, the reward is held back.
Each member's score and the spread are logged beside it (`reward/reward_model/member_<i>`,
`reward/reward_model/std`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from rewards.base import completion_text


@functools.lru_cache(maxsize=8)  # an ensemble's members stay loaded too
def _scorer(path: str, device: str, batch_size: int):
    from rlpost.rlhf.reward_model import RewardScorer

    return RewardScorer(path, device=device, batch_size=batch_size)


def ensemble_reward(member_scores: list[list[float]], penalty: float) -> tuple[list[float], list[float]]:
    """Per sample, mean − `penalty`·std over the members' scores (population std), and the std."""
    combined, spread = [], []
    for scores in zip(*member_scores):
        mean = sum(scores) / len(scores)
        std = (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5
        combined.append(mean - penalty * std)
        spread.append(std)
    return combined, spread


def reward_model_reward(
    prompts,
    completions,
    *,
    path: str | None = None,
    paths: list[str] | None = None,
    penalty: float = 1.0,
    batch_size: int = 16,
    normalize: bool = True,
    device: str = "cpu",
    **_columns,
):
    """The reward model's score of each (prompt, completion); with `paths`, the ensemble's."""
    if (path is None) == (paths is None):
        raise ValueError("give the reward model as `path`, or an ensemble as `paths`, not both")
    texts = [completion_text(c) for c in completions]
    members = []
    for folder in [path] if paths is None else paths:
        scorer = _scorer(str(Path(folder).resolve()), device, batch_size)
        scores = scorer.score(list(prompts), texts)
        members.append(scorer.normalized(scores) if normalize else scores)
    if paths is None:
        return members[0]
    combined, spread = ensemble_reward(members, penalty)
    return {"reward": combined, "std": spread, **{f"member_{i}": scores for i, scores in enumerate(members)}}
