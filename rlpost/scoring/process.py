"""A supervised child process that runs one reward function.

Reward code is user code, so it must not be able to stop or stall a run:

- the function runs in its own persistent child process (a fresh interpreter
  started with ``subprocess``, not a fork: safe inside multithreaded Ray actors),
  which is the only process that imports it; a call is timed out by killing the
  child's process group, and a killed or crashed child is restarted at once in
  the background, ready for the next call;
- a call that raises is retried sample by sample in the same child, so one bad
  sample does not wipe the batch (the retry pass gets its own ``timeout_s``);
- a call that hangs past ``timeout_s`` is killed and its whole batch is lost:
  retrying it sample by sample could cost another ``timeout_s`` per hanging
  sample and stall the step;
- a result of the wrong type or length fails the whole batch (the function's
  contract is broken; a per-sample retry would fail the same way); single values
  that are NaN/inf or not numbers fail only their sample;
- every failure becomes a `RewardError` (rlpost/scoring/outcome.py) where it is
  seen (in the child, or here for timeouts and crashes) and is returned, never logged.

Protocol over two pipes (pickled messages):

- parent -> child: ``("load", reference, kwargs, function_name)``, then one
  ``(prompts, completions, columns)`` per batch;
- child -> parent: ``("ready",)`` or ``("load_error", message)``; then per batch
  either ``("result", BatchOutcome)`` or ``("batch_error", RewardError,
  monotonic_time)`` followed by one ``("sample", index, value, RewardError | None)``
  per sample and ``("done",)``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from rlpost.scoring.outcome import BatchOutcome, RewardError, read_result, whole_batch_failure
from rlpost.scoring.references import (
    RewardLoadError,
    accepted_columns,
    call_reward_fn,
    format_traceback,
    load_reward_fn,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------
# The child's side


def serve_reward_fn(read_fd: int, write_fd: int, parent_pid: int) -> None:
    """Entry point of a reward child process: load the function, then score batches."""
    _exit_with_parent(parent_pid)
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    try:
        _, reference, kwargs, function_name = inbox.recv()
    except EOFError:
        return
    try:
        function = load_reward_fn(reference, kwargs)
    except RewardLoadError as error:
        outbox.send(("load_error", str(error)))
        return
    columns_taken = accepted_columns(function)

    def call(prompts, completions, columns):
        return call_reward_fn(function, prompts, completions, columns, columns_taken)

    outbox.send(("ready",))
    while True:
        try:
            prompts, completions, columns = inbox.recv()
        except EOFError:
            return  # the parent closed the pipe: shut down quietly
        _score_batch(call, function_name, prompts, completions, columns, outbox)


def _score_batch(call, function_name: str, prompts, completions, columns, outbox: Connection) -> None:
    try:
        raw = call(prompts, completions, columns)
    except (Exception, SystemExit) as error:
        batch_error = RewardError(function_name, type(error).__name__, None, format_traceback(error))
        outbox.send(("batch_error", batch_error, time.monotonic()))
        _score_samples_one_by_one(call, function_name, prompts, completions, columns, outbox)
        return
    outbox.send(("result", read_result(raw, len(prompts), function_name)))


def _score_samples_one_by_one(call, function_name: str, prompts, completions, columns, outbox: Connection) -> None:
    for index in range(len(prompts)):
        row_columns = {name: [values[index]] for name, values in columns.items()}
        try:
            raw = call([prompts[index]], [completions[index]], row_columns)
        except (Exception, SystemExit) as error:
            error_record = RewardError(function_name, type(error).__name__, index, format_traceback(error))
            outbox.send(("sample", index, None, error_record))
            continue
        outcome = read_result(raw, 1, function_name)
        # A one-sample result that is wrong as a whole is still this sample's failure.
        error_record = replace(outcome.errors[0], index=index) if outcome.errors else None
        outbox.send(("sample", index, outcome.values[0], error_record))
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


CHILD_BOOTSTRAP = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from rlpost.scoring.process import serve_reward_fn; "
    "serve_reward_fn(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
)


# ----------------------------------------------------------------------------
# The parent's side


class RewardProcess:
    """A persistent child process running one reward function, and its supervision.

    `reference` must already be absolute (see `rlpost.scoring.references.absolute_reference`):
    the child resolves it, possibly after the parent changed directory.
    """

    def __init__(self, reference: str, kwargs: dict[str, Any], name: str, startup_timeout_s: float = 120.0):
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
        self._pending_failure: RewardError | None = None

    # --- lifecycle

    def start(self) -> None:
        """Start the child; it loads the function in the background."""
        self.stop()
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        command = [sys.executable, "-c", CHILD_BOOTSTRAP, json.dumps([str(entry) for entry in sys.path])]
        command += [str(to_child_read), str(from_child_write), str(os.getpid())]
        try:
            self._process = subprocess.Popen(
                command,
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
        self._outbox.send(("load", self.reference, self.kwargs, self.name))
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
        except OSError:
            pass  # the next `submit` starts it again and reports the error with the batch

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

    def submit(self, prompts: list[Any], completions: list[Any], columns: dict[str, list[Any]]) -> None:
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
            self._pending_failure = RewardError(self.name, "load", None, str(error))
        except (OSError, EOFError) as error:
            self._pending_failure = RewardError(self.name, "crash", None, f"could not send the batch: {error}")
            self._restart()

    def collect(self, timeout_s: float) -> BatchOutcome:
        """Wait for the batch's result, killing the child if it takes over `timeout_s`."""
        size = self._batch_size
        if self._pending_failure is not None:
            return whole_batch_failure(size, self._pending_failure)
        try:
            message = self._receive(self._sent_at + timeout_s)
        except _ChildTimedOut:
            self._restart()
            text = f"call did not finish within timeout_s={timeout_s}s; process killed"
            return whole_batch_failure(size, RewardError(self.name, "timeout", None, text))
        except _ChildCrashed as crash:
            self._restart()
            return whole_batch_failure(size, RewardError(self.name, "crash", None, str(crash)))
        if message[0] == "result":
            return message[1]
        _, batch_error, failed_at = message
        return self._collect_samples(size, timeout_s, failed_at, batch_error)

    def _collect_samples(self, size: int, timeout_s: float, failed_at: float, batch_error: RewardError):
        outcome = BatchOutcome([None] * size, set(), [])
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
                outcome.failed.update(missing)
                if missing:
                    outcome.errors.append(RewardError(self.name, kind, missing[0], text))
                break
            if message[0] == "done":
                break
            _, index, value, error = message
            received.add(index)
            outcome.values[index] = value
            if error is not None:
                outcome.failed.add(index)
                outcome.errors.append(error)
        # The batch-level traceback matters when the samples alone did not fail the
        # same way (e.g. the batch failed on something the samples did not trigger).
        outcome.errors.append(batch_error)
        return outcome

    def _receive(self, deadline: float):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._inbox.poll(remaining):
            raise _ChildTimedOut()
        try:
            return self._inbox.recv()
        except (EOFError, OSError):
            raise _ChildCrashed(f"reward process died ({self._exit_description()})") from None


class _ChildTimedOut(Exception):
    """The child did not answer before the deadline."""


class _ChildCrashed(Exception):
    """The child's pipe closed: it died."""


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


def stop_processes(processes: list[RewardProcess]) -> None:
    """Stop every process (a finalizer: holds no reference to their owner)."""
    for process in processes:
        process.stop()
