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
"""

from __future__ import annotations

import functools
from pathlib import Path

from rewards.base import completion_text


@functools.lru_cache(maxsize=2)
def _scorer(path: str, device: str, batch_size: int):
    from rlpost.rlhf.reward_model import RewardScorer

    return RewardScorer(path, device=device, batch_size=batch_size)


def reward_model_reward(
    prompts, completions, *, path: str, batch_size: int = 16, normalize: bool = True, device: str = "cpu", **_columns
) -> list[float]:
    """The reward model's score of each (prompt, completion)."""
    scorer = _scorer(str(Path(path).resolve()), device, batch_size)
    scores = scorer.score(list(prompts), [completion_text(c) for c in completions])
    return scorer.normalized(scores) if normalize else scores
