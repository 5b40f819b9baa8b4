"""Length penalties on the completion: a linear one and DAPO's soft overlong one.

Length unit: tokens when the ``num_tokens`` column is given (the sampler's
count), otherwise characters of the completion text.

Length limit: the ``max_tokens`` column (the per-sample generation limit) in
token mode; otherwise the ``max_length`` keyword, in the active unit. A token
limit is never applied to a character count: in character mode without
``max_length`` the reward raises, naming what is missing.

- ``length``: ``-min(length / limit, 1)``, from 0 (empty) to -1 (at or past the
  limit). Use a small weight; it only breaks ties between equally good answers.
- ``overlong``: DAPO's soft overlong punishment (Yu et al., 2025, eq. 13). With
  ``L_max`` the limit and ``L_cache`` the buffer: 0 while
  ``length <= L_max - L_cache``, then falling linearly to -1 at ``L_max``, and
  -1 beyond. The buffer is the ``buffer`` keyword, or ``buffer_fraction`` of
  the limit (0.2 by default, DAPO used 4096 of 20480).
"""

from __future__ import annotations

from rewards.base import completion_text


def _lengths_and_limits(completions, num_tokens, max_tokens, max_length) -> list[tuple[float, float]]:
    if num_tokens is not None:
        lengths = [float(count) for count in num_tokens]
        if max_tokens is not None:
            limits = [float(limit) for limit in max_tokens]
        elif max_length is not None:
            limits = [float(max_length)] * len(completions)
        else:
            raise ValueError("length rewards need a max_tokens column or a max_length keyword")
    else:
        if max_length is None:
            raise ValueError(
                "length rewards without a num_tokens column count characters and need "
                "max_length (in characters); a max_tokens column alone is not comparable"
            )
        lengths = [float(len(completion_text(completion))) for completion in completions]
        limits = [float(max_length)] * len(completions)
    for limit in limits:
        if limit <= 0:
            raise ValueError(f"length limit must be positive, got {limit}")
    return list(zip(lengths, limits))


def length_reward(
    prompts,
    completions,
    *,
    num_tokens=None,
    max_tokens=None,
    max_length: float | None = None,
    **_columns,
) -> list[float]:
    """Linear length penalty in [-1, 0] (see module docstring)."""
    return [
        -min(length / limit, 1.0)
        for length, limit in _lengths_and_limits(completions, num_tokens, max_tokens, max_length)
    ]


def overlong_penalty(length: float, max_length: float, buffer: float) -> float:
    """DAPO soft overlong penalty for one completion: 0, a linear ramp, then -1."""
    free_length = max_length - buffer
    if length <= free_length:
        return 0.0
    if length > max_length or buffer <= 0:
        return -1.0
    return (free_length - length) / buffer


def overlong_reward(
    prompts,
    completions,
    *,
    num_tokens=None,
    max_tokens=None,
    max_length: float | None = None,
    buffer: float | None = None,
    buffer_fraction: float = 0.2,
    **_columns,
) -> list[float]:
    """DAPO soft overlong penalty in [-1, 0] (see module docstring)."""
    scores = []
    for length, limit in _lengths_and_limits(completions, num_tokens, max_tokens, max_length):
        soft_buffer = buffer if buffer is not None else buffer_fraction * limit
        scores.append(overlong_penalty(length, limit, min(soft_buffer, limit)))
    return scores
