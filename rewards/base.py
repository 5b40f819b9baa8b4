"""The reward-function convention and a per-sample decorator.

A reward function scores a batch::

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

Extra dataset columns (for example ``answer``) arrive as keyword lists of the
same length as ``prompts``. ``None`` means "no opinion on this sample" (the
function does not apply to it); it is not a failure. Functions may be ``async``.
Configuration belongs in keyword arguments with defaults, so that
``functools.partial(fn, max_length=512)`` (or ``kwargs`` in a reward spec)
configures them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, Callable


def per_sample(score_one: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``f(prompt, completion, **columns) -> float | None`` into a batched reward.

    Each column list is split so ``f`` receives the value for its own sample,
    e.g. ``answer="13"`` rather than the whole list. Async functions stay async:
    their samples are awaited concurrently.
    """
    if inspect.iscoroutinefunction(score_one):

        @functools.wraps(score_one)
        async def batched_async(prompts, completions, **columns):
            return list(
                await asyncio.gather(
                    *(
                        score_one(prompt, completion, **_row(columns, index))
                        for index, (prompt, completion) in enumerate(zip(prompts, completions))
                    )
                )
            )

        return batched_async

    @functools.wraps(score_one)
    def batched(prompts, completions, **columns):
        return [
            score_one(prompt, completion, **_row(columns, index))
            for index, (prompt, completion) in enumerate(zip(prompts, completions))
        ]

    return batched


def _row(columns: dict[str, Any], index: int) -> dict[str, Any]:
    # Only lists are per-sample columns; anything else (a configuration keyword
    # bound with functools.partial) is passed through unchanged.
    return {name: values[index] if isinstance(values, (list, tuple)) else values for name, values in columns.items()}


def column(columns_value: Any, index: int, name: str) -> Any:
    """The value of a per-sample column at `index`, with a clear error if it is missing."""
    if columns_value is None:
        raise ValueError(f"this reward needs the dataset column {name!r}")
    return columns_value[index]


def score_against_answer(score_one: Callable[[str, Any], float], completions, answer) -> list[float | None]:
    """`score_one(completion_text, gold)` for every sample; None where the gold answer is None."""
    golds = [column(answer, index, "answer") for index in range(len(completions))]
    return [
        None if gold is None else score_one(completion_text(completion), gold)
        for completion, gold in zip(completions, golds)
    ]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or conversational messages joined."""
    # Conversational completions are lists of {"role": ..., "content": ...} messages.
    if isinstance(completion, list):
        return "\n".join(str(message.get("content", "")) for message in completion)
    return str(completion)
