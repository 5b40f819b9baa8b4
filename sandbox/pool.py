"""SandboxPool: long-lived sandbox workers serving snippets, one at a time each.

The pool never forks the calling process (it may be a multithreaded Ray actor): each worker
is a fresh, single-threaded interpreter started with subprocess (worker_process.py), and the
worker forks one child per snippet. The pool picks the strongest isolation tier that starts,
hands each snippet to an idle worker and turns the worker's reply into a Result. A worker
that dies is replaced on the next request; a snippet that hangs its worker is answered with
reason "sandbox_error" after timeout_s + a grace period.
"""

import atexit
import concurrent.futures
import itertools
import logging
import os
import queue
import signal
import threading
import time
import weakref

from . import cgroup, protocol
from .launch import (
    STAGING_PREFIX,
    TIERS,
    Settings,
    Staging,
    bwrap_path,
    owner_is_dead,
    remove_stale_staging,
)
from .result import ERROR, OK, OUTPUT_LIMIT, SANDBOX_ERROR, SIGNAL, TIMEOUT, Result, SandboxUnavailable
from .worker_process import WorkerProcess, WorkerStartError

log = logging.getLogger("sandbox")

RESPONSE_GRACE_S = 5.0  # beyond the snippet's timeout: kill, drain, clean up, answer
CGROUP_HEADROOM_MB = 128  # worker itself + tmpfs files, above the snippet's memory_mb

_logged_tiers = set()
_pool_ids = itertools.count()
_stale_swept = False


class SandboxPool:
    """Isolated Python execution with `num_workers` long-lived sandbox workers.

    Thread-safe; use as a context manager or call close().

    Per-snippet limits (defaults for run/run_batch, which may override the first three):
      timeout_s         wall-clock limit; the snippet's whole process tree is then killed
      memory_mb         address space per process (RLIMIT_AS) and, with a memory cgroup,
                        the cap of the worker's cgroup (plus CGROUP_HEADROOM_MB)
      max_output_bytes  per stream; beyond it the snippet is killed and output truncated
      max_processes     RLIMIT_NPROC: counts every process of the sandbox uid
      max_file_mb       largest file a snippet may write (RLIMIT_FSIZE)
      max_open_files    RLIMIT_NOFILE
    Isolation:
      tier              force "bwrap", "landlock-seccomp" or "rlimits"; by default the
                        strongest working tier is chosen (see launch.py)
      allow_insecure    permit falling back to (or forcing) "rlimits", which isolates nothing
      python            interpreter for snippets (default: this one's base interpreter)
      tmpfs_mb, shm_mb  sizes of the sandbox's private /tmp and /dev/shm (bwrap tier)
      preload           modules imported once in each worker so snippets start faster
      use_cgroup        put each worker in its own memory+pids cgroup when permitted
    """

    def __init__(
        self,
        num_workers: int = 1,
        *,
        timeout_s: float = 5.0,
        memory_mb: int = 256,
        max_output_bytes: int = 16384,
        max_processes: int = 64,
        max_file_mb: int = 16,
        max_open_files: int = 256,
        allow_insecure: bool = False,
        tier: str = None,
        python: str = None,
        tmpfs_mb: int = 64,
        shm_mb: int = 16,
        preload: tuple = None,
        use_cgroup: bool = True,
    ):
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if tier is not None and tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
        self.num_workers = num_workers
        self.timeout_s, self.memory_mb, self.max_output_bytes = timeout_s, memory_mb, max_output_bytes
        self.max_processes, self.max_file_mb, self.max_open_files = max_processes, max_file_mb, max_open_files
        self._settings = Settings(python=python or "", tmpfs_mb=tmpfs_mb, shm_mb=shm_mb)
        if preload is not None:
            self._settings.preload = tuple(preload)
        self._use_cgroup = use_cgroup
        self._id = next(_pool_ids)
        self._closed = False
        _sweep_stale_once()
        self._staging = Staging()
        self._workers = []
        self._idle = queue.Queue()
        self._batch_executor = None
        # Stops the workers and deletes files even if close() is never called.
        self._finalizer = weakref.finalize(self, _release, self._workers, self._staging)
        try:
            self.tier = self._start_first_worker(tier, allow_insecure)
            for index in range(1, num_workers):
                worker = self._new_worker(index, self.tier)
                worker.start()
                self._workers.append(worker)
        except BaseException:
            self.close()
            raise
        for worker in self._workers:
            self._idle.put(worker)
        self._batch_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_workers, thread_name_prefix="sandbox-batch"
        )
        self._log_tier()

    def _new_worker(self, index: int, tier: str) -> WorkerProcess:
        cgroup_name = f"{STAGING_PREFIX}{os.getpid()}-{self._id}-{index}" if self._use_cgroup else None
        return WorkerProcess(index, tier, self._staging, self._settings, cgroup_name, self.max_processes + 16)

    def _start_first_worker(self, forced_tier, allow_insecure) -> str:
        if forced_tier == "rlimits" and not allow_insecure:
            raise SandboxUnavailable('tier "rlimits" is insecure; pass allow_insecure=True to use it')
        if forced_tier:
            candidates = [forced_tier]
        else:
            candidates = ["bwrap", "landlock-seccomp"] + (["rlimits"] if allow_insecure else [])
        failures = []
        for tier in candidates:
            if tier == "bwrap" and not bwrap_path():
                failures.append("bwrap: not installed (Debian/Ubuntu package bubblewrap)")
                continue
            worker = self._new_worker(0, tier)
            try:
                worker.start()
            except (WorkerStartError, OSError) as exc:
                failures.append(f"{tier}: {exc}")
                continue
            self._workers.append(worker)
            if failures:
                log.warning("sandbox: stronger tiers unavailable: %s", "; ".join(failures))
            return tier
        hint = "" if allow_insecure else "; pass allow_insecure=True to run with rlimits only (NOT isolated)"
        raise SandboxUnavailable("no sandbox tier works here: " + "; ".join(failures) + hint)

    def _log_tier(self) -> None:
        if self.tier in _logged_tiers:
            return
        _logged_tiers.add(self.tier)
        hello = self._workers[0].handshake
        detail = "Python {}, Landlock ABI {}, seccomp {}".format(
            hello.get("python"), hello.get("landlock_abi"), hello.get("seccomp")
        )
        hardened = hello.get("landlock_abi") and hello.get("seccomp")
        if self.tier == "bwrap" and hardened:
            log.info("sandbox tier: bwrap (%s)", detail)
        elif self.tier == "bwrap":
            log.warning("sandbox tier: bwrap, but this kernel lacks Landlock or seccomp support (%s)", detail)
        elif self.tier == "landlock-seccomp":
            log.warning("sandbox tier: landlock-seccomp, no namespaces because bwrap is unusable (%s)", detail)
        else:
            log.warning("sandbox tier: rlimits -- snippets are NOT isolated (%s)", detail)

    def run(
        self, code: str, timeout_s: float = None, memory_mb: int = None, max_output_bytes: int = None, stdin: str = ""
    ) -> Result:
        """Run one snippet in an idle worker (waiting for one if all are busy)."""
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        memory_mb = self.memory_mb if memory_mb is None else memory_mb
        max_output_bytes = self.max_output_bytes if max_output_bytes is None else max_output_bytes
        message = {
            "code": code,
            "stdin": stdin or "",
            "timeout_s": float(timeout_s),
            "memory_mb": int(memory_mb),
            "max_output_bytes": int(max_output_bytes),
            "max_processes": self.max_processes,
            "max_file_mb": self.max_file_mb,
            "max_open_files": self.max_open_files,
        }
        started = time.monotonic()
        worker = self._idle.get()
        try:
            if worker.cgroup is not None:
                worker.cgroup.set_memory_limit((memory_mb + CGROUP_HEADROOM_MB) << 20)
            try:
                reply = worker.request(message, started + timeout_s + RESPONSE_GRACE_S)
            except (protocol.ProtocolError, OSError, WorkerStartError) as exc:
                log.warning("sandbox worker %d lost during a snippet (%s); restarting it", worker.index, exc)
                worker.stop(kill=True)  # restarted on its next request
                return self._sandbox_error(f"sandbox error: {exc}", time.monotonic() - started)
        finally:
            self._idle.put(worker)
        return self._result(reply, time.monotonic() - started)

    def _sandbox_error(self, message: str, duration_s: float) -> Result:
        return Result("", message, -signal.SIGKILL, False, SANDBOX_ERROR, duration_s, self.tier)

    def _result(self, reply: dict, duration_s: float) -> Result:
        if "error" in reply:
            log.error("sandbox worker failed on a snippet: %s", reply["error"])
            return self._sandbox_error(f"sandbox error: {reply['error']}", duration_s)
        exit_code = int(reply["exit_code"])
        if reply.get("setup_failed"):
            reason = SANDBOX_ERROR
        elif reply["timed_out"]:
            reason = TIMEOUT
        elif reply["truncated"]:
            reason = OUTPUT_LIMIT
        elif exit_code < 0:
            reason = SIGNAL
        else:
            reason = OK if exit_code == 0 else ERROR
        return Result(
            stdout=reply["stdout"],
            stderr=reply["stderr"],
            exit_code=exit_code,
            timed_out=bool(reply["timed_out"]),
            reason=reason,
            duration_s=duration_s,
            tier=self.tier,
            truncated=bool(reply["truncated"]),
        )

    def run_batch(
        self, codes, timeout_s: float = None, memory_mb: int = None, max_output_bytes: int = None, stdin=""
    ) -> list:
        """Run many snippets concurrently across the workers; results in input order.

        stdin is one string for all snippets or a list with one per snippet.
        """
        codes = list(codes)
        stdins = list(stdin) if isinstance(stdin, (list, tuple)) else [stdin] * len(codes)
        if len(stdins) != len(codes):
            raise ValueError("stdin list must have one entry per snippet")
        return list(
            self._batch_executor.map(
                lambda pair: self.run(pair[0], timeout_s, memory_mb, max_output_bytes, pair[1]), zip(codes, stdins)
            )
        )

    def worker_pids(self) -> list:
        """Host pids of the worker processes (bwrap or interpreter), for monitoring."""
        return [w.proc.pid for w in self._workers if w.proc is not None]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._batch_executor is not None:
            self._batch_executor.shutdown(wait=True)
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _release(workers, staging) -> None:
    for worker in workers:
        worker.stop()
        if worker.cgroup is not None:
            worker.cgroup.remove()
    staging.cleanup()


def _sweep_stale_once() -> None:
    """Remove what pools of killed processes left behind (staging folders, empty cgroups)."""
    global _stale_swept
    if not _stale_swept:
        _stale_swept = True
        remove_stale_staging()
        cgroup.remove_stale(STAGING_PREFIX, owner_is_dead)


_default_pool = None
_default_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """The process-wide pool behind `sandbox.run`, created on first use."""
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool._closed:
            _default_pool = SandboxPool(num_workers=1)
            atexit.register(_default_pool.close)
        return _default_pool


def run(
    code: str, timeout_s: float = 5, memory_mb: int = 256, max_output_bytes: int = 16384, stdin: str = ""
) -> Result:
    """Run one Python snippet in the default sandbox pool."""
    return default_pool().run(
        code, timeout_s=timeout_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes, stdin=stdin
    )


def detect_tier(allow_insecure: bool = False) -> str:
    """The strongest isolation tier that works here (starts and stops one worker)."""
    if _default_pool is not None and not _default_pool._closed:
        return _default_pool.tier
    with SandboxPool(num_workers=1, allow_insecure=allow_insecure) as pool:
        return pool.tier
