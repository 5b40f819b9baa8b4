"""Loading reward functions by reference and running them robustly.

A reward function follows the convention of `rewards.base`:
``fn(prompts, completions, **columns) -> list[float | None]`` (sync or async).
It is named by a `RewardSpec` whose ``name`` is one of

- a built-in name from `rewards.BUILTIN_REWARDS` ("math", "format", ...);
- ``"package.module:function"`` (an importable module);
- ``"path/to/file.py:function"`` (any file, also outside the project; relative
  paths are relative to the working directory at load time; the file's folder is
  appended to ``sys.path`` so it can import its neighbours).

`load_reward_fn` resolves a reference and checks it at start-up, raising
`RewardLoadError` with the reference and what is wrong.

`RewardComputer` runs every function of a list of specs on a batch and combines
them. Reward code is user code, so it must not be able to stop or stall a run:

- each function runs in its own persistent child process (a fresh interpreter
  started with ``subprocess``, not a fork: safe inside multithreaded Ray actors),
  so a call can be timed out by killing the process; a killed or crashed process
  is restarted at once in the background, ready for the next call;
- the functions of one batch run in parallel, one process each;
- a call that raises is retried sample by sample in the same process, so one
  bad sample does not wipe the batch (the retry pass gets its own ``timeout_s``);
- a call that hangs past ``timeout_s`` is killed and its whole batch is lost:
  retrying it sample by sample could cost another ``timeout_s`` per hanging
  sample and stall the step;
- a result of the wrong type or length fails the whole batch (the function's
  contract is broken; a per-sample retry would fail the same way); single values
  that are NaN/inf or not numbers fail only their sample;
- failed samples get None from that function; the per-function counts of failed
  samples and the first error of each kind per function are reported in the
  `RewardResult`, and logged once per run;
- a function that fails on every sample for ``max_consecutive_failed_steps``
  consecutive calls raises `RewardFunctionBroken`, so a run does not silently
  train on no signal.

`RewardWorker` wraps a `RewardComputer` in a Ray actor (`RewardWorkerActor`, or
`make_reward_worker_actor` for other options). Ray is imported only when one of
those two is used.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import numbers
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

# Tracebacks are kept whole up to this size (their tail is the useful part).
MAX_ERROR_CHARS = 4000


class RewardLoadError(ValueError):
    """A reward reference cannot be turned into a usable reward function."""


class RewardFunctionBroken(RuntimeError):
    """A reward function failed on every sample for too many consecutive calls."""

    def __init__(self, function_name: str, last_error: str, failed_steps: int):
        super().__init__(
            f"reward function {function_name!r} failed on every sample for {failed_steps} "
            f"consecutive steps; stopping instead of training without its signal. "
            f"Last error:\n{last_error}"
        )
        self.function_name = function_name
        self.last_error = last_error
        self.failed_steps = failed_steps

    def __reduce__(self):
        # Keeps the exception picklable (it crosses process and Ray boundaries).
        return (type(self), (self.function_name, self.last_error, self.failed_steps))


@dataclass
class RewardSpec:
    """One reward function in a run's reward mix."""

    name: str
    """Reference to the function: a built-in name ("math"), "package.module:function",
    or "path/to/file.py:function"."""

    weight: float = 1.0
    """Multiplier of this function's value in the total reward."""

    timeout_s: float = 10.0
    """Seconds one call (one batch) may take before its process is killed."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments bound to the function (like functools.partial), e.g.
    {"max_length": 512} for "overlong"."""


@dataclass
class RewardResult:
    """Rewards of one batch, with what went wrong (picklable)."""

    total: list[float | None]
    """Weighted sum per sample over the functions that gave a value; the default
    reward (or None) where none did."""

    per_fn: dict[str, list[float | None]]
    """Raw, unweighted values per function name (None: no value or failed)."""

    failures: dict[str, int]
    """Number of samples each function failed on in this batch."""

    errors: list[str]
    """The first error of each kind per function in this batch, with the function's
    name and the sample index when known."""

    duration_s: float
    """Wall time of the whole batch."""

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Flat means and failure counts for a metrics logger."""
        out = {f"{prefix}/duration_s": self.duration_s}
        totals = [value for value in self.total if value is not None]
        if totals:
            out[f"{prefix}/total_mean"] = sum(totals) / len(totals)
        for name, values in self.per_fn.items():
            given = [value for value in values if value is not None]
            if given:
                out[f"{prefix}/{name}/mean"] = sum(given) / len(given)
            out[f"{prefix}/{name}/failures"] = float(self.failures.get(name, 0))
        return out


# ----------------------------------------------------------------------------
# Loading


def load_reward_fn(ref: str, kwargs: dict[str, Any] | None = None) -> Callable[..., Any]:
    """Resolve a reward reference to a callable taking (prompts, completions, **columns).

    `kwargs` are bound with functools.partial after checking the function accepts
    them. Raises `RewardLoadError` naming the reference and the problem.
    """
    reference = ref.strip() if isinstance(ref, str) else ref
    if not isinstance(reference, str) or not reference:
        raise RewardLoadError(f"reward reference must be a non-empty string, got {ref!r}")
    function = _resolve_reference(reference)
    if not callable(function):
        raise RewardLoadError(f"{reference!r}: a {type(function).__name__} object is not callable")
    if kwargs:
        _check_keywords(reference, function, kwargs)
        function = functools.partial(function, **kwargs)
    _check_signature(reference, function)
    return function


def absolute_reference(ref: str) -> str:
    """The reference with a file path made absolute (so another process resolves it alike)."""
    reference = ref.strip()
    location, separator, attribute = reference.rpartition(":")
    if separator and _is_file_location(location):
        return f"{_file_path(location)}:{attribute}"
    return reference


def reward_display_name(ref: str) -> str:
    """Short name for logs: the built-in name or the function part of a reference."""
    return ref.strip().rpartition(":")[2] or ref.strip()


def _resolve_reference(reference: str) -> Any:
    if ":" not in reference:
        # Built-ins are looked up by reference so only the needed module is imported.
        from rewards import BUILTIN_REFERENCES, builtin_reward

        if reference in BUILTIN_REFERENCES:
            return builtin_reward(reference)
        raise RewardLoadError(
            f"{reference!r} is not a built-in reward ({', '.join(sorted(BUILTIN_REFERENCES))}) "
            f"nor a 'package.module:function' or 'path/to/file.py:function' reference"
        )
    location, _, attribute = reference.rpartition(":")
    if not location or not attribute:
        raise RewardLoadError(f"{reference!r}: expected 'module:function' or 'file.py:function'")
    if _is_file_location(location):
        module = _import_file(reference, location)
        where = f"file {module.__file__}"
    else:
        module = _import_module(reference, location)
        where = f"module {location!r}"
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RewardLoadError(f"{reference!r}: {where} has no attribute {attribute!r}") from None
    return target


def _is_file_location(location: str) -> bool:
    return location.endswith(".py") or "/" in location or os.sep in location


def _file_path(location: str) -> Path:
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    return path.resolve()


def _import_file(reference: str, location: str):
    path = _file_path(location)
    if not path.is_file():
        raise RewardLoadError(f"{reference!r}: file {path} does not exist")
    # One module per file path, so loading a file twice gives the same functions.
    module_name = f"_rlpost_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RewardLoadError(f"{reference!r}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    # Registered before running, as a normal import would, so that dataclasses and
    # pickling inside the file can find the module.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        raise RewardLoadError(
            f"{reference!r}: importing {path} failed: {type(error).__name__}: {error}\n{_format_traceback(error)}"
        ) from error
    return module


def _import_module(reference: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise RewardLoadError(f"{reference!r}: module {module_name!r} not found") from error
        raise RewardLoadError(f"{reference!r}: importing module {module_name!r} failed: {error}") from error
    except (Exception, SystemExit) as error:
        raise RewardLoadError(
            f"{reference!r}: importing module {module_name!r} failed: {type(error).__name__}: "
            f"{error}\n{_format_traceback(error)}"
        ) from error


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None  # some C callables have no signature: nothing to check


def _check_keywords(reference: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    signature = _signature(function)
    if signature is None:
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    nameable = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(set(kwargs) - nameable)
    if unknown:
        raise RewardLoadError(f"{reference!r}: the function takes no keyword argument(s) {unknown}")


def _check_signature(reference: str, function: Callable[..., Any]) -> None:
    signature = _signature(function)
    if signature is None:
        return
    parameters = list(signature.parameters.values())
    positional = [
        p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    takes_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    problem = None
    if len(positional) < 2 and not takes_varargs:
        problem = "it must take prompts and completions as its first two positional arguments"
    elif any(
        p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is inspect.Parameter.empty for p in positional[2:]
    ):
        problem = "it has required positional-only parameters after (prompts, completions)"
    if problem:
        raise RewardLoadError(
            f"{reference!r}: signature {signature} cannot take (prompts, completions, **columns): {problem}"
        )


def _accepted_columns(function: Callable[..., Any]) -> set[str] | None:
    """Column names the function can receive, or None if it takes **columns."""
    signature = _signature(function)
    if signature is None:
        return None
    parameters = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    positional = [
        p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    first_two = {p.name for p in positional[:2]}
    return {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in first_two
    }


def call_reward_fn(
    function: Callable[..., Any],
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, list[Any]],
    accepted_columns: set[str] | None = None,
) -> Any:
    """Call a reward function in this process and return its raw result.

    Columns the function has no parameter for are left out (unless it takes
    **columns), so ``def f(prompts, completions, answer)`` works. Awaitables are
    run to completion.
    """
    if accepted_columns is not None:
        columns = {name: values for name, values in columns.items() if name in accepted_columns}
    result = function(prompts, completions, **columns)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable):
    return await awaitable


# ----------------------------------------------------------------------------
# Checking what a function returned


def _check_values(raw: Any, expected_length: int) -> tuple[list[float | None], dict[int, tuple[str, str, bool]]]:
    """Validate a raw result: values (None where failed) and errors by sample index.

    An error is (kind, message, whole_batch).
    """
    if hasattr(raw, "tolist") and not isinstance(raw, (list, tuple)):
        raw = raw.tolist()  # numpy arrays and tensors
    if not isinstance(raw, (list, tuple)):
        message = f"returned {type(raw).__name__}, expected a list of {expected_length} floats or None"
        return [None] * expected_length, {i: ("wrong-type", message, True) for i in range(expected_length)}
    if len(raw) != expected_length:
        message = f"returned {len(raw)} values for {expected_length} samples"
        return [None] * expected_length, {i: ("wrong-length", message, True) for i in range(expected_length)}
    values: list[float | None] = []
    errors: dict[int, tuple[str, str, bool]] = {}
    for index, value in enumerate(raw):
        if value is not None and not isinstance(value, numbers.Real) and callable(getattr(value, "item", None)):
            try:
                value = value.item()  # one-element tensors and numpy scalars
            except Exception:
                pass
        if value is None:
            values.append(None)
        elif isinstance(value, numbers.Real):  # bools count as 0/1
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = math.inf
            if math.isfinite(number):
                values.append(number)
            else:
                values.append(None)
                errors[index] = ("non-finite", f"returned {number!r}", False)
        else:
            values.append(None)
            errors[index] = ("wrong-type", f"returned {type(value).__name__} {_short_repr(value)}", False)
    return values, errors


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_traceback(error: BaseException) -> str:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return text if len(text) <= MAX_ERROR_CHARS else "...\n" + text[-MAX_ERROR_CHARS:]


# ----------------------------------------------------------------------------
# The child process that runs one reward function
#
# Protocol over two pipes (pickled messages):
#   parent -> child: ("load", reference, kwargs), then one (prompts, completions, columns)
#                    per batch
#   child -> parent: ("ready",) or ("load_error", message); then per batch either
#                    ("result", values, errors) or
#                    ("batch_error", kind, traceback, monotonic_time) followed by one
#                    ("sample", index, value, error_or_None) per sample and ("done",).


def _serve_reward_fn(read_fd: int, write_fd: int, parent_pid: int) -> None:
    """Entry point of a reward child process: load the function, then score batches."""
    _exit_with_parent(parent_pid)
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    try:
        _, reference, kwargs = inbox.recv()
    except EOFError:
        return
    try:
        function = load_reward_fn(reference, kwargs)
    except RewardLoadError as error:
        outbox.send(("load_error", str(error)))
        return
    accepted_columns = _accepted_columns(function)
    outbox.send(("ready",))
    while True:
        try:
            prompts, completions, columns = inbox.recv()
        except EOFError:
            return  # the parent closed the pipe: shut down quietly
        _score_in_child(function, accepted_columns, prompts, completions, columns, outbox)


def _score_in_child(function, accepted_columns, prompts, completions, columns, outbox: Connection) -> None:
    try:
        raw = call_reward_fn(function, prompts, completions, columns, accepted_columns)
    except (Exception, SystemExit) as error:
        outbox.send(("batch_error", type(error).__name__, _format_traceback(error), time.monotonic()))
        _score_samples_one_by_one(function, accepted_columns, prompts, completions, columns, outbox)
        return
    try:
        values, errors = _check_values(raw, len(prompts))
    except Exception as error:  # an exotic result object that breaks inspection
        message = f"result could not be read: {type(error).__name__}: {error}"
        values, errors = [None] * len(prompts), {i: ("wrong-type", message, True) for i in range(len(prompts))}
    outbox.send(("result", values, errors))


def _score_samples_one_by_one(function, accepted_columns, prompts, completions, columns, outbox) -> None:
    for index in range(len(prompts)):
        row_columns = {name: [values[index]] for name, values in columns.items()}
        try:
            raw = call_reward_fn(function, [prompts[index]], [completions[index]], row_columns, accepted_columns)
        except (Exception, SystemExit) as error:
            outbox.send(("sample", index, None, (type(error).__name__, _format_traceback(error), False)))
            continue
        try:
            values, errors = _check_values(raw, 1)
        except Exception as error:
            values, errors = [None], {0: ("wrong-type", f"result could not be read: {error}", False)}
        outbox.send(("sample", index, values[0], errors.get(0)))
    outbox.send(("done",))


def _exit_with_parent(parent_pid: int) -> None:
    """Make this process end soon after the process that started it ends.

    A watcher thread notices re-parenting. (PR_SET_PDEATHSIG is not used: it fires
    when the starting *thread* exits, which in thread-pooled actors is not the end
    of the parent.) A closed pipe also ends the serving loop.
    """
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_CHILD_BOOTSTRAP = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from rlpost.rewarding import _serve_reward_fn; "
    "_serve_reward_fn(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
)


@dataclass
class _Outcome:
    """What one reward function did with one batch."""

    values: list[float | None]
    failed: set[int]
    # (sample index or None for the whole batch, kind, message), in order of occurrence.
    events: list[tuple[int | None, str, str]]


class _RewardProcess:
    """A persistent child process running one reward function."""

    def __init__(self, reference: str, kwargs: dict[str, Any], name: str, startup_timeout_s: float):
        self.reference = reference
        self.kwargs = kwargs
        self.name = name
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen | None = None
        self._inbox: Connection | None = None  # messages from the child
        self._outbox: Connection | None = None  # messages to the child
        self._ready = False
        self._started_at = 0.0
        self._batch_size = 0
        self._sent_at = 0.0
        self._pending_failure: tuple[str, str] | None = None

    # --- lifecycle

    def start(self) -> None:
        """Start the child; it loads the function in the background."""
        self.stop()
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CHILD_BOOTSTRAP,
                    json.dumps([str(entry) for entry in sys.path]),
                    str(to_child_read),
                    str(from_child_write),
                    str(os.getpid()),
                ],
                pass_fds=(to_child_read, from_child_write),
                # Own process group, so a kill also reaches anything the function spawned.
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            os.close(to_child_write)
            os.close(from_child_read)
            raise
        finally:
            os.close(to_child_read)
            os.close(from_child_write)
        self._outbox = Connection(to_child_write, readable=False)
        self._inbox = Connection(from_child_read, writable=False)
        self._outbox.send(("load", self.reference, self.kwargs))
        self._ready = False
        self._started_at = time.monotonic()

    def wait_ready(self) -> None:
        """Block until the child has loaded the function; RewardLoadError if it cannot."""
        if self._ready:
            return
        if self._process is None:
            self.start()
        remaining = self._started_at + self.startup_timeout_s - time.monotonic()
        if not self._inbox.poll(max(remaining, 0.0)):
            self.stop()
            raise RewardLoadError(
                f"{self.reference!r}: reward process did not start within {self.startup_timeout_s:.0f}s"
            )
        try:
            message = self._inbox.recv()
        except (EOFError, OSError):
            detail = self._exit_description()
            self.stop()
            raise RewardLoadError(f"{self.reference!r}: reward process died while loading ({detail})") from None
        if message[0] == "load_error":
            self.stop()
            raise RewardLoadError(message[1])
        self._ready = True

    def stop(self) -> None:
        """Kill the child (and its process group) and close the pipes."""
        if self._process is not None:
            _kill_process_group(self._process)
            self._process = None
        for connection in (self._inbox, self._outbox):
            if connection is not None:
                connection.close()
        self._inbox = self._outbox = None
        self._ready = False

    def _restart(self) -> None:
        # Restarting right away lets the new process load while the run goes on.
        self.stop()
        try:
            self.start()
        except OSError as error:
            logger.error("could not restart reward process for %s: %s", self.name, error)

    def _exit_description(self) -> str:
        if self._process is None:
            return "not running"
        try:
            code = self._process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "pipe closed, process still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    # --- scoring

    def submit(self, prompts, completions, columns) -> None:
        """Send a batch; the child starts scoring it at once."""
        self._batch_size = len(prompts)
        self._pending_failure = None
        try:
            if self._process is not None and self._process.poll() is not None:
                self._restart()  # died between batches
            self.wait_ready()
            self._sent_at = time.monotonic()
            self._outbox.send((prompts, completions, columns))
        except RewardLoadError as error:
            self._pending_failure = ("load", str(error))
        except (OSError, EOFError) as error:
            self._pending_failure = ("crash", f"could not send the batch: {error}")
            self._restart()

    def collect(self, timeout_s: float) -> _Outcome:
        """Wait for the batch's result, killing the child if it takes over `timeout_s`."""
        size = self._batch_size
        if self._pending_failure is not None:
            kind, message = self._pending_failure
            return _Outcome([None] * size, set(range(size)), [(None, kind, message)])
        try:
            message = self._receive(self._sent_at + timeout_s)
        except _ChildTimedOut:
            self._restart()
            text = f"call did not finish within timeout_s={timeout_s}s; process killed"
            return _Outcome([None] * size, set(range(size)), [(None, "timeout", text)])
        except _ChildCrashed as crash:
            self._restart()
            return _Outcome([None] * size, set(range(size)), [(None, "crash", str(crash))])
        if message[0] == "result":
            _, values, errors = message
            events = [(None if whole else index, kind, text) for index, (kind, text, whole) in sorted(errors.items())]
            return _Outcome(values, set(errors), events)
        _, batch_kind, batch_traceback, failed_at = message
        return self._collect_samples(size, timeout_s, failed_at, (None, batch_kind, batch_traceback))

    def _collect_samples(self, size, timeout_s, failed_at, batch_event) -> _Outcome:
        values: list[float | None] = [None] * size
        failed: set[int] = set()
        events: list[tuple[int | None, str, str]] = []
        received: set[int] = set()
        deadline = failed_at + timeout_s  # the per-sample retry gets its own budget
        while True:
            try:
                message = self._receive(deadline)
            except (_ChildTimedOut, _ChildCrashed) as stop:
                self._restart()
                if isinstance(stop, _ChildTimedOut):
                    kind = "timeout"
                    text = f"per-sample retry did not finish within timeout_s={timeout_s}s; process killed"
                else:
                    kind, text = "crash", f"during per-sample retry: {stop}"
                missing = [index for index in range(size) if index not in received]
                failed.update(missing)
                if missing:
                    events.append((missing[0], kind, text))
                break
            if message[0] == "done":
                break
            _, index, value, error = message
            received.add(index)
            values[index] = value
            if error is not None:
                failed.add(index)
                kind, text, _ = error
                events.append((index, kind, text))
        # The batch-level traceback matters when the samples alone did not fail the
        # same way (e.g. the batch failed on something the samples did not trigger).
        events.append(batch_event)
        return _Outcome(values, failed, events)

    def _receive(self, deadline: float):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._inbox.poll(remaining):
            raise _ChildTimedOut()
        try:
            return self._inbox.recv()
        except (EOFError, OSError):
            raise _ChildCrashed(f"reward process died ({self._exit_description()})") from None


class _ChildTimedOut(Exception):
    pass


class _ChildCrashed(Exception):
    pass


def _kill_process_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        logger.warning("reward process %d did not exit after SIGKILL", process.pid)


def _stop_processes(processes: list[_RewardProcess]) -> None:
    for process in processes:
        process.stop()


# ----------------------------------------------------------------------------
# Combining several reward functions


class RewardComputer:
    """Scores batches with several reward functions, each in its own child process.

    `specs` may be `RewardSpec` objects or dicts of their fields. All functions are
    loaded (and checked) in this process and in their child processes when the
    computer is created, so bad references fail at start-up with
    `RewardLoadError`. Call `close` (or use ``with``) to stop the processes.

    One batch at a time: calls must not overlap (use one computer per thread, or
    several `RewardWorker` actors).
    """

    def __init__(
        self,
        specs: list[RewardSpec] | list[dict[str, Any]],
        default_reward: float | None = None,
        max_consecutive_failed_steps: int = 3,
        startup_timeout_s: float = 120.0,
    ):
        self.specs = [spec if isinstance(spec, RewardSpec) else RewardSpec(**spec) for spec in specs]
        if not self.specs:
            raise ValueError("RewardComputer needs at least one reward spec")
        for spec in self.specs:
            if not math.isfinite(spec.weight):
                raise ValueError(f"reward {spec.name!r}: weight must be finite, got {spec.weight}")
            if not spec.timeout_s > 0:
                raise ValueError(f"reward {spec.name!r}: timeout_s must be positive, got {spec.timeout_s}")
        if max_consecutive_failed_steps < 1:
            raise ValueError("max_consecutive_failed_steps must be at least 1")
        self.default_reward = default_reward
        self.max_consecutive_failed_steps = max_consecutive_failed_steps
        for spec in self.specs:
            load_reward_fn(spec.name, spec.kwargs)  # fail fast, with a clear message
        self.names = _unique_names([spec.name for spec in self.specs])
        self._processes = [
            _RewardProcess(absolute_reference(spec.name), dict(spec.kwargs), name, startup_timeout_s)
            for spec, name in zip(self.specs, self.names)
        ]
        self._finalizer = weakref.finalize(self, _stop_processes, list(self._processes))
        try:
            for process in self._processes:
                process.start()  # all load in parallel
            for process in self._processes:
                process.wait_ready()
        except BaseException:
            self.close()
            raise
        self._all_failed_streak = {name: 0 for name in self.names}
        self._logged_error_kinds: set[tuple[str, str]] = set()

    def __call__(
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
        columns = {column_name: list(values) for column_name, values in columns.items()}
        prompts, completions = list(prompts), list(completions)
        if size == 0:
            return RewardResult([], {name: [] for name in self.names}, {name: 0 for name in self.names}, [], 0.0)

        # Submit everywhere first so that the functions run in parallel.
        for process in self._processes:
            process.submit(prompts, completions, columns)
        outcomes = {process.name: process.collect(spec.timeout_s) for process, spec in zip(self._processes, self.specs)}

        errors: list[str] = []
        for name, outcome in outcomes.items():
            seen_kinds: set[str] = set()
            for index, kind, text in outcome.events:
                if kind in seen_kinds:
                    continue
                seen_kinds.add(kind)
                where = f"at sample {index}" if index is not None else "on the whole batch"
                errors.append(f"[{name}] {kind} {where}: {text}")
                if (name, kind) not in self._logged_error_kinds:
                    self._logged_error_kinds.add((name, kind))
                    logger.warning("reward function %s failed (%s, first of its kind): %s", name, kind, text)

        total = [self._combine(outcomes, index) for index in range(size)]
        result = RewardResult(
            total=total,
            per_fn={name: outcome.values for name, outcome in outcomes.items()},
            failures={name: len(outcome.failed) for name, outcome in outcomes.items()},
            errors=errors,
            duration_s=time.perf_counter() - started,
        )
        self._check_broken(outcomes, errors)
        return result

    def _combine(self, outcomes: dict[str, _Outcome], index: int) -> float | None:
        weighted = [
            spec.weight * outcomes[name].values[index]
            for spec, name in zip(self.specs, self.names)
            if outcomes[name].values[index] is not None
        ]
        return sum(weighted) if weighted else self.default_reward

    def _check_broken(self, outcomes: dict[str, _Outcome], errors: list[str]) -> None:
        for name, outcome in outcomes.items():
            if len(outcome.failed) == len(outcome.values):
                self._all_failed_streak[name] += 1
            else:
                self._all_failed_streak[name] = 0
        for name in self.names:
            if self._all_failed_streak[name] >= self.max_consecutive_failed_steps:
                last_error = next((error for error in errors if error.startswith(f"[{name}] ")), "unknown")
                raise RewardFunctionBroken(name, last_error, self._all_failed_streak[name])

    def close(self) -> None:
        """Stop all reward processes."""
        self._finalizer()

    def __enter__(self) -> RewardComputer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _unique_names(references: list[str]) -> list[str]:
    """Short display names, made unique.

    The function name, unless different references share it (then the full
    reference); repeats of one reference get "#2", "#3", ...
    """
    references = [reference.strip() for reference in references]
    short = [reward_display_name(reference) for reference in references]
    names = [
        name if len({r for r, n in zip(references, short) if n == name}) == 1 else reference
        for name, reference in zip(short, references)
    ]
    unique: list[str] = []
    for name in names:
        candidate, copy = name, 1
        while candidate in unique:
            copy += 1
            candidate = f"{name}#{copy}"
        unique.append(candidate)
    return unique


# ----------------------------------------------------------------------------
# Ray actor


class RewardWorker:
    """Scores batches in a Ray actor with a `RewardComputer` (see `RewardWorkerActor`)."""

    def __init__(
        self,
        specs: list[RewardSpec] | list[dict[str, Any]],
        default_reward: float | None = None,
        max_consecutive_failed_steps: int = 3,
    ):
        self._computer = RewardComputer(specs, default_reward, max_consecutive_failed_steps)

    def score(
        self,
        prompts: list[Any],
        completions: list[Any],
        columns: dict[str, list[Any]] | None = None,
    ) -> RewardResult:
        """Score one batch (see `RewardComputer.__call__`)."""
        return self._computer(prompts, completions, columns)

    def names(self) -> list[str]:
        """The per-function names used in `RewardResult.per_fn`."""
        return list(self._computer.names)

    def close(self) -> None:
        """Stop the reward processes (also done when the actor exits)."""
        self._computer.close()


# A dead worker (killed, out of memory) is restarted by Ray and its in-flight
# batch retried; scoring is idempotent, so a retry is safe. Application errors
# (RewardFunctionBroken) are not retried.
WORKER_MAX_RESTARTS = 3
WORKER_MAX_TASK_RETRIES = 2


def make_reward_worker_actor(
    max_restarts: int = WORKER_MAX_RESTARTS,
    max_task_retries: int = WORKER_MAX_TASK_RETRIES,
    **ray_options: Any,
):
    """`RewardWorker` as a Ray actor class with restart and retry settings."""
    import ray

    return ray.remote(max_restarts=max_restarts, max_task_retries=max_task_retries, **ray_options)(RewardWorker)


_reward_worker_actor = None


def __getattr__(name: str):
    # `RewardWorkerActor` is built on first use so that importing this module (as
    # every reward child process does) does not import Ray.
    global _reward_worker_actor
    if name == "RewardWorkerActor":
        if _reward_worker_actor is None:
            _reward_worker_actor = make_reward_worker_actor()
        return _reward_worker_actor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
