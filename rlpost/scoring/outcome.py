"""What a reward function did with a batch: one value or one failure per sample.

`RewardError` records one failure where it is seen; `BatchOutcome` holds a batch's values,
failed samples and errors; `check_values` turns a function's raw result into one, keeping
numbers and failing everything else (whole batch for a wrong type or length, one sample for a
NaN/inf or a non-number). All of it is picklable: the reward child process sends it back.

A function may also return {"reward": [...], "<series>": [...], ...}: the "reward" list is its
value, and every other list of the same length is logged beside it (`reward/<name>/<series>`,
e.g. each member of a reward-model ensemble) without entering any total.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RewardError:
    """One failure of a reward function, recorded where it happened (picklable)."""

    function: str
    """Display name of the function (``verifier:<reference>`` for a separate verifier)."""

    kind: str
    """"timeout", "crash", "load", "wrong-type", "wrong-length", "non-finite", or the
    class name of the exception the function raised."""

    index: int | None
    """Sample index in the batch, or None when the whole batch failed."""

    message: str
    """What went wrong: a traceback, or a description of the bad value."""

    def __str__(self) -> str:
        where = "on the whole batch" if self.index is None else f"at sample {self.index}"
        return f"[{self.function}] {self.kind} {where}: {self.message}"


@dataclass
class BatchOutcome:
    """What one reward function did with one batch."""

    values: list[float | None]
    """One value per sample; None where the function gave none or failed."""

    failed: set[int]
    """Indices of the samples the function failed on."""

    errors: list[RewardError]
    """Every failure, in order of occurrence."""

    extras: dict[str, list[float | None]] = field(default_factory=dict)
    """Series logged beside the values (a dict result's other keys); never part of a reward."""


def whole_batch_failure(size: int, error: RewardError) -> BatchOutcome:
    """Every sample of the batch failed, for one reason."""
    return BatchOutcome([None] * size, set(range(size)), [error])


def check_values(raw: Any, expected_length: int, function_name: str) -> BatchOutcome:
    """Validate a function's raw result: numbers are kept, everything else fails."""
    if isinstance(raw, Mapping):
        if "reward" not in raw:
            message = f"returned a dict without a 'reward' list (keys {sorted(map(str, raw))[:5]})"
            return whole_batch_failure(expected_length, RewardError(function_name, "wrong-type", None, message))
        outcome = check_values(raw["reward"], expected_length, function_name)
        for series, values in raw.items():
            if series != "reward":  # a malformed series is dropped, not the reward
                extra = check_values(values, expected_length, f"{function_name}/{series}")
                outcome.extras[str(series)] = extra.values
        return outcome
    if hasattr(raw, "tolist") and not isinstance(raw, (list, tuple)):
        raw = raw.tolist()  # numpy arrays and tensors
    if not isinstance(raw, (list, tuple)):
        message = f"returned {type(raw).__name__}, expected a list of {expected_length} floats or None"
        return whole_batch_failure(expected_length, RewardError(function_name, "wrong-type", None, message))
    if len(raw) != expected_length:
        message = f"returned {len(raw)} values for {expected_length} samples"
        return whole_batch_failure(expected_length, RewardError(function_name, "wrong-length", None, message))
    outcome = BatchOutcome([], set(), [])
    for index, value in enumerate(raw):
        if value is not None and not isinstance(value, numbers.Real) and callable(getattr(value, "item", None)):
            try:
                value = value.item()  # one-element tensors and numpy scalars
            except Exception:
                pass
        problem = None
        if value is None:
            outcome.values.append(None)
        elif isinstance(value, numbers.Real):  # bools count as 0/1
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = math.inf
            finite = math.isfinite(number)
            outcome.values.append(number if finite else None)
            if not finite:
                problem = ("non-finite", f"returned {number!r}")
        else:
            outcome.values.append(None)
            problem = ("wrong-type", f"returned {type(value).__name__} {_short_repr(value)}")
        if problem is not None:
            outcome.failed.add(index)
            outcome.errors.append(RewardError(function_name, problem[0], index, problem[1]))
    return outcome


def read_result(raw: Any, expected_length: int, function_name: str) -> BatchOutcome:
    """`check_values` that never raises: a result that cannot even be inspected fails the batch."""
    try:
        return check_values(raw, expected_length, function_name)
    except Exception as error:  # an exotic result object that breaks inspection
        message = f"result could not be read: {type(error).__name__}: {error}"
        return whole_batch_failure(expected_length, RewardError(function_name, "wrong-type", None, message))


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
