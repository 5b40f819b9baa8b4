"""Scoring batches with a mix of reward functions, and the Ray worker that does it.

`RewardRunner` runs every function of a list of `RewardSpec`s on one batch, each
in its own supervised child process (`rlpost.scoring.process`), all in parallel,
and combines them:

- ``total`` is the weighted sum of the values per sample (``default_reward``
  where no function of nonzero weight gave one: a weight-0 function, such as a
  monitor's judge, is reported but never makes a total); ``per_fn`` holds each
  function's raw values;
- failed samples get None from that function; the per-function counts of failed
  samples and the first `RewardError` of each kind per function are returned in
  the `RewardResult` (nothing is logged here: the caller prints what it wants);
- a function that fails on every sample for ``max_consecutive_failed_steps``
  consecutive calls raises `RewardFunctionBroken`, so a run does not silently
  train on no signal;
- ``accuracy`` comes from the verifier of each sample's task (``verifiers`` maps a
  task name to a reward reference). A verifier that is also one of the specs
  (same reference, no kwargs) reuses that spec's values; any other runs in its
  own child process on the samples of its tasks only and is never part of the
  total.

The runner never imports a reward function: only its child process does, and a
bad reference is reported by the child and raised as `RewardLoadError` from
`RewardRunner.start`. `RewardWorker` is the same thing as a plain class meant to
be a Ray actor (``ray.remote(RewardWorker).options(**RewardWorker.RAY_OPTIONS)``).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any

from rlpost.scoring.outcome import BatchOutcome, RewardError
from rlpost.scoring.process import RewardProcess, stop_processes
from rlpost.scoring.references import RewardSpec, absolute_reference, unique_names

__all__ = ["RewardError", "RewardFunctionBroken", "RewardResult", "RewardRunner", "RewardWorker"]

# A verifier that is not one of the specs has no spec to take a timeout from; it
# gets the default of a spec.
VERIFIER_TIMEOUT_S = RewardSpec.timeout_s


class RewardFunctionBroken(RuntimeError):
    """A reward function failed on every sample for too many consecutive calls."""

    def __init__(self, function_name: str, last_error: RewardError | None, failed_steps: int):
        super().__init__(
            f"reward function {function_name!r} failed on every sample for {failed_steps} "
            f"consecutive steps; stopping instead of training without its signal. "
            f"Last error:\n{last_error if last_error is not None else 'unknown'}"
        )
        self.function_name = function_name
        self.last_error = last_error
        self.failed_steps = failed_steps

    def __reduce__(self):
        # Keeps the exception picklable (it crosses process and Ray boundaries).
        return (type(self), (self.function_name, self.last_error, self.failed_steps))


@dataclass
class RewardResult:
    """Rewards of one batch, with what went wrong (picklable)."""

    total: list[float | None]
    """Weighted sum per sample over the functions of nonzero weight that gave a value;
    the default reward (or None) where none did."""

    per_fn: dict[str, list[float | None]]
    """Raw, unweighted values per function name (None: no value or failed), and the series a
    function logs beside its value as "<name>/<series>"."""

    failures: dict[str, int]
    """Number of samples each function failed on in this batch."""

    errors: list[RewardError]
    """The first error of each kind per function (verifiers included) in this batch."""

    accuracy: list[float | None]
    """Per sample, the value of its task's verifier; None when the task has no
    verifier or the verifier gave no value."""

    duration_s: float
    """Wall time of the whole batch."""


class RewardRunner:
    """Scores batches with several reward functions, each in its own child process.

    `specs` may be `RewardSpec` objects or dicts of their fields. `start` (also
    done by ``with`` and by the first `score`) starts the children and waits until
    each has loaded its function. Call `close` (or use ``with``) to stop them.

    One batch at a time: calls must not overlap (use one runner per thread, or
    several `RewardWorker` actors).
    """

    def __init__(
        self,
        specs: list[RewardSpec] | list[dict[str, Any]],
        default_reward: float | None = None,
        verifiers: dict[str, str] | None = None,
        max_consecutive_failed_steps: int = 3,
        startup_timeout_s: float = 120.0,
    ):
        self.specs = [spec if isinstance(spec, RewardSpec) else RewardSpec(**spec) for spec in specs]
        if not self.specs:
            raise ValueError("RewardRunner needs at least one reward spec")
        for spec in self.specs:
            if not math.isfinite(spec.weight):
                raise ValueError(f"reward {spec.name!r}: weight must be finite, got {spec.weight}")
            if not spec.timeout_s > 0:
                raise ValueError(f"reward {spec.name!r}: timeout_s must be positive, got {spec.timeout_s}")
        if max_consecutive_failed_steps < 1:
            raise ValueError("max_consecutive_failed_steps must be at least 1")
        self.default_reward = default_reward
        self.max_consecutive_failed_steps = max_consecutive_failed_steps
        self.names = unique_names([spec.name for spec in self.specs])
        self._processes = [
            RewardProcess(absolute_reference(spec.name), dict(spec.kwargs), name, startup_timeout_s)
            for spec, name in zip(self.specs, self.names)
        ]
        self.verifiers = dict(verifiers or {})
        for task, ref in self.verifiers.items():
            if not isinstance(ref, str):
                raise ValueError(f"verifier of task {task!r} must be a reward reference, got {ref!r}")
        # Verifiers are keyed by their absolute reference, so that two spellings of
        # one file share a process.
        self._verifier_key = {task: absolute_reference(ref) for task, ref in self.verifiers.items()}
        self._verifier_spec_name: dict[str, str] = {}  # key -> name of the spec whose values it reuses
        self._verifier_processes: dict[str, RewardProcess] = {}
        for task, key in self._verifier_key.items():
            if key in self._verifier_spec_name or key in self._verifier_processes:
                continue
            reusable = [
                name
                for spec, name in zip(self.specs, self.names)
                if absolute_reference(spec.name) == key and not spec.kwargs
            ]
            if reusable:
                self._verifier_spec_name[key] = reusable[0]
            else:
                name = f"verifier:{self.verifiers[task].strip()}"
                self._verifier_processes[key] = RewardProcess(key, {}, name, startup_timeout_s)
        self._finalizer = weakref.finalize(self, stop_processes, self._every_process())
        self._started = False
        self._all_failed_streak = {name: 0 for name in self.names}

    def _every_process(self) -> list[RewardProcess]:
        return self._processes + list(self._verifier_processes.values())

    def start(self) -> list[str]:
        """Start every child and wait until it loaded its function; the per-function names.

        Raises `RewardLoadError` (naming the reference) if a function cannot be loaded.
        """
        if not self._finalizer.alive:
            raise RuntimeError("this RewardRunner is closed")
        if not self._started:
            try:
                for process in self._every_process():
                    process.start()  # all load in parallel
                for process in self._every_process():
                    process.wait_ready()
            except BaseException:
                stop_processes(self._every_process())
                raise
            self._started = True
        return list(self.names)

    def score(
        self,
        prompts: list[Any],
        completions: list[Any],
        columns: dict[str, list[Any]] | None = None,
    ) -> RewardResult:
        """Score one batch; see `RewardResult`. Raises `RewardFunctionBroken`."""
        started = time.perf_counter()
        columns = dict(columns or {})
        size = len(prompts)
        if len(completions) != size:
            raise ValueError(f"{size} prompts but {len(completions)} completions")
        for column_name, values in columns.items():
            if not isinstance(values, (list, tuple)) or len(values) != size:
                raise ValueError(f"column {column_name!r} must be a list of {size} values")
        if self.verifiers and "task" not in columns:
            raise ValueError("verifiers are set, so every batch needs a 'task' column")
        columns = {column_name: list(values) for column_name, values in columns.items()}
        prompts, completions = list(prompts), list(completions)
        if size == 0:
            return RewardResult([], {name: [] for name in self.names}, {name: 0 for name in self.names}, [], [], 0.0)
        self.start()

        tasks = columns.get("task", [None] * size)
        verifier_samples = {
            key: [index for index, task in enumerate(tasks) if self._verifier_key.get(task) == key]
            for key in self._verifier_processes
        }
        # Submit everywhere first so that the functions run in parallel.
        for process in self._processes:
            process.submit(prompts, completions, columns)
        for key, process in self._verifier_processes.items():
            if verifier_samples[key]:
                process.submit(*_select(verifier_samples[key], prompts, completions, columns))
        outcomes = {process.name: process.collect(spec.timeout_s) for process, spec in zip(self._processes, self.specs)}
        verifier_outcomes = {
            key: _in_batch_indices(process.collect(VERIFIER_TIMEOUT_S), verifier_samples[key], size)
            for key, process in self._verifier_processes.items()
            if verifier_samples[key]
        }

        errors = _first_of_each_kind([*outcomes.values(), *verifier_outcomes.values()])
        result = RewardResult(
            total=[self._combine(outcomes, index) for index in range(size)],
            per_fn={
                **{name: outcome.values for name, outcome in outcomes.items()},
                **{f"{name}/{k}": v for name, outcome in outcomes.items() for k, v in outcome.extras.items()},
            },
            failures={name: len(outcome.failed) for name, outcome in outcomes.items()},
            errors=errors,
            accuracy=[self._accuracy(task, index, outcomes, verifier_outcomes) for index, task in enumerate(tasks)],
            duration_s=time.perf_counter() - started,
        )
        self._check_broken(outcomes, errors)
        return result

    def _combine(self, outcomes: dict[str, BatchOutcome], index: int) -> float | None:
        weighted = [
            spec.weight * outcomes[name].values[index]
            for spec, name in zip(self.specs, self.names)
            if spec.weight != 0 and outcomes[name].values[index] is not None
        ]
        return sum(weighted) if weighted else self.default_reward

    def _accuracy(
        self, task: Any, index: int, outcomes: dict[str, BatchOutcome], verifier_outcomes: dict[str, BatchOutcome]
    ) -> float | None:
        key = self._verifier_key.get(task)
        if key in self._verifier_spec_name:
            return outcomes[self._verifier_spec_name[key]].values[index]
        if key in verifier_outcomes:
            return verifier_outcomes[key].values[index]
        return None

    def _check_broken(self, outcomes: dict[str, BatchOutcome], errors: list[RewardError]) -> None:
        for name, outcome in outcomes.items():
            if len(outcome.failed) == len(outcome.values):
                self._all_failed_streak[name] += 1
            else:
                self._all_failed_streak[name] = 0
        for name in self.names:
            if self._all_failed_streak[name] >= self.max_consecutive_failed_steps:
                own_errors = [error for error in errors if error.function == name]
                last_error = own_errors[-1] if own_errors else None
                raise RewardFunctionBroken(name, last_error, self._all_failed_streak[name])

    def close(self) -> None:
        """Stop all reward processes."""
        self._finalizer()
        self._started = False

    def __enter__(self) -> RewardRunner:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _select(indices: list[int], prompts: list[Any], completions: list[Any], columns: dict[str, list[Any]]):
    """The prompts, completions and columns of the samples at `indices`."""
    return (
        [prompts[index] for index in indices],
        [completions[index] for index in indices],
        {name: [values[index] for index in indices] for name, values in columns.items()},
    )


def _in_batch_indices(outcome: BatchOutcome, indices: list[int], size: int) -> BatchOutcome:
    """An outcome on the samples at `indices`, spread back over the whole batch."""
    values: list[float | None] = [None] * size
    for position, index in enumerate(indices):
        values[index] = outcome.values[position]
    errors = [error if error.index is None else replace(error, index=indices[error.index]) for error in outcome.errors]
    return BatchOutcome(values, {indices[position] for position in outcome.failed}, errors)


def _first_of_each_kind(outcomes: list[BatchOutcome]) -> list[RewardError]:
    kept: list[RewardError] = []
    seen: set[tuple[str, str]] = set()
    for outcome in outcomes:
        for error in outcome.errors:
            if (error.function, error.kind) not in seen:
                seen.add((error.function, error.kind))
                kept.append(error)
    return kept


class RewardWorker:
    """A `RewardRunner` behind the methods of a Ray actor: `start`, `score`, `close`."""

    # A dead worker (killed, out of memory) is restarted by Ray and its in-flight
    # batch retried; scoring is idempotent, so a retry is safe. Application errors
    # (RewardFunctionBroken, RewardLoadError) are not retried.
    RAY_OPTIONS = {"max_restarts": 3, "max_task_retries": 2}

    def __init__(
        self,
        specs: list[RewardSpec] | list[dict[str, Any]],
        default_reward: float | None = None,
        verifiers: dict[str, str] | None = None,
        max_consecutive_failed_steps: int = 3,
    ):
        # Nothing is checked or started here: an exception in a Ray actor's
        # constructor kills the actor with an unreadable message.
        self._runner_arguments = (specs, default_reward, verifiers, max_consecutive_failed_steps)
        self._runner: RewardRunner | None = None

    def start(self) -> list[str]:
        """Start the reward processes and wait until they loaded; the per-function names.

        Raises `RewardLoadError` naming a reference that cannot be loaded.
        """
        if self._runner is None:
            runner = RewardRunner(*self._runner_arguments)
            try:
                runner.start()
            except BaseException:
                runner.close()
                raise
            self._runner = runner
        return list(self._runner.names)

    def score(
        self,
        prompts: list[Any],
        completions: list[Any],
        columns: dict[str, list[Any]] | None = None,
    ) -> RewardResult:
        """Score one batch (see `RewardRunner.score`)."""
        if self._runner is None:
            # After a restart Ray re-runs only __init__, so the processes start here.
            self.start()
        return self._runner.score(prompts, completions, columns)

    def close(self) -> None:
        """Stop the reward processes (also done when the actor exits)."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None
