"""The pool's handle on one sandbox worker process: start it, check its handshake, send it
snippets, and stop it with every process it or its snippets left behind.

Workers are started from one dedicated thread, because bwrap --die-with-parent
(PR_SET_PDEATHSIG) fires when the *thread* that started it exits, and Ray actors call the
pool from short-lived threads.
"""

import concurrent.futures
import os
import signal
import subprocess
import threading
import time

from . import cgroup, protocol
from .launch import WORKER_ENV, Settings, Staging, worker_launch

HANDSHAKE_TIMEOUT_S = 30.0  # interpreter start inside bwrap on a busy machine

_spawner = None
_spawner_lock = threading.Lock()


def _spawn(argv, **kwargs) -> subprocess.Popen:
    """Popen from one long-lived thread (see the module docstring)."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")
    return _spawner.submit(subprocess.Popen, argv, **kwargs).result()


class WorkerStartError(RuntimeError):
    """A worker process did not start or failed its handshake."""


def process_tree(root_pid: int) -> list:
    """root_pid and all its descendants, read from /proc."""
    pids, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def _kill_session(session_id: int) -> None:
    """SIGKILL every process in a session (snippets cannot leave the worker's session)."""
    for _ in range(20):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == session_id:  # fields after "(comm)": state ppid pgrp session
                found = True
                try:
                    os.kill(int(name), signal.SIGKILL)
                except OSError:
                    pass
        if not found:
            return
        time.sleep(0.005)


class WorkerProcess:
    """One worker process and the pipes to it; used by one thread at a time.

    Holds no reference to its pool, so a pool dropped without close() can be collected
    (and its finalizer stop the workers).
    """

    def __init__(self, index: int, tier: str, staging: Staging, settings: Settings, cgroup_name, pids_limit: int):
        self.index, self.tier = index, tier
        self.staging, self.settings = staging, settings
        self.cgroup_name, self.pids_limit = cgroup_name, pids_limit  # cgroup_name None: no cgroup
        self.proc = None
        self.own_pid_namespace = tier == "bwrap"
        self.handshake = {}
        self.cgroup = None
        self.log_path = os.path.join(staging.log_dir, f"worker-{index}.log")

    def start(self) -> None:
        launch = worker_launch(self.tier, self.index, self.staging, self.settings)
        self.own_pid_namespace = launch.own_pid_namespace
        with open(self.log_path, "ab") as log_file:
            try:
                self.proc = _spawn(
                    launch.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    env=dict(WORKER_ENV),
                    close_fds=True,
                    bufsize=0,
                    **launch.popen_kwargs,
                )
            except OSError as exc:
                raise WorkerStartError(f"cannot start worker: {exc}") from None
        try:
            hello = protocol.receive(self.proc.stdout.fileno(), time.monotonic() + HANDSHAKE_TIMEOUT_S)
        except protocol.ProtocolError as exc:
            self.stop(kill=True)
            raise WorkerStartError(f"worker did not start ({exc}): {self._log_tail()}") from None
        problem = self._check_handshake(hello)
        if problem:
            self.stop(kill=True)
            raise WorkerStartError(problem)
        self.handshake = hello
        if self.cgroup_name is not None:
            if self.cgroup is None:
                self.cgroup = cgroup.WorkerCgroup.create(self.cgroup_name)
            if self.cgroup is not None:
                # The worker forks nothing before its first request, so the tree is complete.
                self.cgroup.attach(process_tree(self.proc.pid))
                self.cgroup.set_pids_limit(self.pids_limit)

    def _check_handshake(self, hello: dict):
        if not hello.get("ready"):
            return f"unexpected handshake {hello!r}"
        if hello.get("uid") == 0:
            return "worker runs as root; refusing"
        if self.tier == "landlock-seccomp" and not (hello.get("landlock_abi") and hello.get("seccomp")):
            return f"Landlock (ABI {hello.get('landlock_abi')}) or seccomp ({hello.get('seccomp')}) unavailable"
        return None

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace").strip() or "(no output)"
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            proc.stdin.close()  # EOF: the worker exits after its current snippet
        except OSError:
            pass
        if not kill:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                kill = True
        if kill:
            proc.kill()  # bwrap: its pid namespace dies with it
            proc.wait()
        if not self.own_pid_namespace:
            _kill_session(proc.pid)
        proc.stdout.close()

    def restart(self) -> None:
        self.stop(kill=True)
        self.start()

    def request(self, message: dict, deadline: float) -> dict:
        """Send one snippet and wait for its answer; ProtocolError if the worker is lost."""
        if not self.alive():
            self.restart()
        try:
            protocol.send(self.proc.stdin.fileno(), message)
        except OSError:  # died while idle: the snippet has not run yet, so send it again
            self.restart()
            protocol.send(self.proc.stdin.fileno(), message)
        return protocol.receive(self.proc.stdout.fileno(), deadline)
