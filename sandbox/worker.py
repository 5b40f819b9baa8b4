"""The sandbox worker: a long-lived, single-threaded process that runs one snippet per fork.

Started by the pool as `python -I -S -B -c <boot> <code dir> <config json>`, inside
bubblewrap when available. It only ever imports the stdlib and its sibling modules
(copied next to it by the pool), so it runs under any Python 3.9+ the sandbox can see.

Per request (see protocol.py) it forks a child that confines itself, in this order:
own process group, death signal tied to the worker, stdio on fresh pipes, then the
`Hardening` of hardening.py (Landlock, every other fd closed, rlimits, seccomp); then it runs
the code in a fresh `__main__` namespace like `python -I -c`. The worker feeds stdin,
collects stdout/stderr up to the byte limit, enforces the wall-clock timeout, and afterwards
kills and reaps everything the snippet left behind before answering.
"""

import atexit
import builtins
import io
import json
import os
import select
import shutil
import signal
import sys
import time
import traceback
import types

from . import protocol
from .hardening import PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_PDEATHSIG, Hardening, drop_privileges, prctl

SETUP_FAILED_EXIT = 125
SETUP_FAILED_MARKER = "sandbox setup failed:"
_READ_CHUNK = 65536
_DRAIN_SECONDS = 1.0


def _exit_status_of(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_code(code: str, code_dir: str) -> int:
    """Run the snippet like `python -I -c code` and return its exit status."""
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    # Line buffering so output printed before a timeout or crash is still collected.
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.argv = ["-c"]
    sys.path[:] = [p for p in sys.path if p != code_dir]
    for name in [n for n in sys.modules if n == "sandbox_worker" or n.startswith("sandbox_worker.")]:
        del sys.modules[name]
    # A real __main__ module, so pickle (multiprocessing) finds functions the snippet defines.
    main_module = types.ModuleType("__main__")
    main_module.__builtins__ = builtins
    sys.modules["__main__"] = main_module
    status = 0
    try:
        exec(compile(code, "<string>", "exec"), main_module.__dict__)
    except SystemExit as exc:
        status = _exit_status_of(exc)
    except BaseException as exc:  # report like the interpreter would, minus this frame
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        status = 1
    try:
        atexit._run_exitfuncs()
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # wait for non-daemon threads, as interpreter exit does
    except SystemExit as exc:
        status = _exit_status_of(exc)
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return status


def _child(request: dict, hardening: Hardening, stdin_r: int, stdout_w: int, stderr_w: int, code_dir: str):
    """Runs in the forked child; never returns."""
    status = SETUP_FAILED_EXIT
    try:
        try:
            os.setpgid(0, 0)  # own process group: the worker kills the snippet by group
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            os.dup2(stdin_r, 0)
            os.dup2(stdout_w, 1)
            os.dup2(stderr_w, 2)
            os.chdir(hardening.scratch)
            os.umask(0o077)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_IGN)  # as in a fresh interpreter
            hardening.apply(request)
        except BaseException as exc:
            os.write(2, f"{SETUP_FAILED_MARKER} {exc!r}\n".encode())
            return
        status = _run_code(request["code"], code_dir)
    finally:
        os._exit(status)


class _Collector:
    """Reads one stream up to a byte limit."""

    def __init__(self, fd: int, limit: int):
        self.fd, self.limit = fd, limit
        self.data = bytearray()
        self.open = True
        self.overflowed = False

    def read(self) -> None:
        try:
            chunk = os.read(self.fd, _READ_CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self.open = False
            return
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.overflowed = True
            chunk = chunk[:room]
        self.data += chunk

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _children_of_self() -> list:
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return pids


def _kill_and_reap_leftovers() -> None:
    """Kill and reap every remaining child of this worker.

    The worker is a child subreaper, so a snippet's orphans, even ones that escaped its
    process group, are re-parented to it and show up here.
    """
    give_up = time.monotonic() + 5.0
    while time.monotonic() < give_up:
        leftovers = _children_of_self()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            reaped, _ = os.waitpid(-1, 0 if leftovers else os.WNOHANG)
        except ChildProcessError:
            return
        if reaped == 0 and not leftovers:
            time.sleep(0.001)  # a killed process is exiting but not yet visible as a child


def _clear_folder(path: str, mode: int) -> None:
    """Empty a writable folder so nothing leaks from one snippet to the next.

    Runs when every snippet process is dead, so nothing can race it. A snippet may have
    removed permissions (the folder and its entries belong to the same uid): restore them,
    never following symlinks, which may point anywhere.
    """
    try:
        os.chmod(path, mode)
    except OSError:
        pass
    for name in os.listdir(path):
        full = os.path.join(path, name)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                os.chmod(full, 0o700)
                for root, dirs, _ in os.walk(full):
                    for d in dirs:
                        sub = os.path.join(root, d)
                        if not os.path.islink(sub):
                            try:
                                os.chmod(sub, 0o700)
                            except OSError:
                                pass
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.unlink(full)
        except OSError:
            pass


class _StdinFeeder:
    """Writes the request's stdin into the snippet's stdin pipe as fast as the pipe takes it."""

    def __init__(self, fd: int, data: bytes):
        self.fd, self.pending = fd, memoryview(data)
        if not self.pending:
            self.close()

    def write(self) -> bool:
        """Write what the pipe takes now; True once everything is written (or the snippet
        closed its stdin)."""
        try:
            self.pending = self.pending[os.write(self.fd, self.pending[:_READ_CHUNK]) :]
        except BlockingIOError:
            pass
        except OSError:  # the snippet closed its stdin
            self.pending = self.pending[:0]
        return not self.pending

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _supervise(pid: int, exit_fd, stdin: _StdinFeeder, out: _Collector, err: _Collector, deadline: float):
    """Feed stdin and collect output until the child exits, the deadline passes or a stream
    overflows. Returns (timed_out, wait status or None when the child was not reaped here)."""
    poller = select.poll()
    by_fd = {out.fd: out, err.fd: err}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    if exit_fd is not None:
        poller.register(exit_fd, select.POLLIN)
    if stdin.fd is not None:
        poller.register(stdin.fd, select.POLLOUT)
    exited, status = False, None
    while not (out.overflowed or err.overflowed):
        wait_s = deadline - time.monotonic()
        if wait_s <= 0:
            return True, status
        if exit_fd is None:
            wait_s = min(wait_s, 0.01)  # no pidfd: poll the child's state
        for fd, _events in poller.poll(wait_s * 1000):
            if fd == exit_fd:
                exited = True
            elif fd == stdin.fd:
                if stdin.write():
                    poller.unregister(fd)
                    stdin.close()
            else:
                collector = by_fd[fd]
                collector.read()
                if not collector.open:
                    poller.unregister(fd)
        if exit_fd is None and not exited:
            reaped, wait_status = os.waitpid(pid, os.WNOHANG)
            if reaped:
                exited, status = True, wait_status
        if exited:
            break
    return False, status


def _drain(collectors) -> None:
    """Every writer is dead, so the pipes reach EOF quickly; collect what is left."""
    drain_deadline = time.monotonic() + _DRAIN_SECONDS
    for collector in collectors:
        os.set_blocking(collector.fd, True)
        while collector.open and not collector.overflowed and time.monotonic() < drain_deadline:
            if not select.select([collector.fd], [], [], max(0.0, drain_deadline - time.monotonic()))[0]:
                break
            collector.read()


def run_snippet(request: dict, hardening: Hardening, code_dir: str) -> dict:
    """Run one request in a forked, confined child; the reply the pool turns into a Result."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(request, hardening, stdin_r, stdout_w, stderr_w, code_dir)
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)
    try:
        exit_fd = os.pidfd_open(pid)  # readable once the child exits, without reaping it
    except (AttributeError, OSError):
        exit_fd = None
    limit = int(request["max_output_bytes"])
    out, err = _Collector(stdout_r, limit), _Collector(stderr_r, limit)
    for fd in (stdin_w, stdout_r, stderr_r):
        os.set_blocking(fd, False)
    stdin = _StdinFeeder(stdin_w, request.get("stdin", "").encode("utf-8", errors="replace"))
    timed_out, status = _supervise(pid, exit_fd, stdin, out, err, started + float(request["timeout_s"]))

    # The main process is gone, too slow or too loud: nothing of the snippet may survive it.
    # Kill its group before reaping it, so the group id cannot have been reused meanwhile.
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if status is None:
        _, status = os.waitpid(pid, 0)
    _kill_and_reap_leftovers()
    duration = time.monotonic() - started
    _drain((out, err))
    stdin.close()
    for fd in (stdout_r, stderr_r, exit_fd):
        if fd is not None:
            os.close(fd)
    for path, mode in hardening.folder_modes.items():
        _clear_folder(path, mode)

    exit_code = os.waitstatus_to_exitcode(status)
    stderr_text = err.text()
    setup_failed = exit_code == SETUP_FAILED_EXIT and stderr_text.startswith(SETUP_FAILED_MARKER)
    return {
        "stdout": out.text(),
        "stderr": stderr_text,
        "exit_code": exit_code,
        "timed_out": timed_out,
        "truncated": out.overflowed or err.overflowed,
        "setup_failed": setup_failed,
        "run_s": duration,
    }


def _add_exit_builtins() -> None:
    """exit() and quit(), which `python -S` leaves out and snippets often call."""
    try:
        import site

        site.setquit()
    except Exception:
        pass


def main(config_json: str) -> None:
    config = json.loads(config_json)
    # The protocol owns fds 0 and 1; keep stray prints of the worker itself off them.
    sys.stdout = sys.stderr
    if config.get("drop_to") and os.getuid() == 0:
        drop_privileges(*config["drop_to"])
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("refusing to run snippets as root")
    prctl(PR_SET_DUMPABLE, 0)  # other processes of this uid may not ptrace or read our memory
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a snippet come back to us to be killed
    scratch = config["scratch"]
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    os.chmod(scratch, 0o700)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": scratch, "TMPDIR": scratch})
    _add_exit_builtins()
    for name in config.get("preload", []):
        try:
            __import__(name)  # imported once here, already loaded in every forked snippet
        except ImportError:
            pass
    hardening = Hardening(config)
    code_dir = config["code_dir"]
    protocol.send(
        1,
        {
            "ready": True,
            "uid": os.getuid(),
            "pid": os.getpid(),
            "landlock_abi": hardening.landlock_abi,
            "seccomp": hardening.seccomp,
            "python": sys.version.split()[0],
        },
    )
    while True:
        try:
            request = protocol.receive(0)
        except protocol.ProtocolError:
            return  # the pool closed the pipe: shut down
        try:
            reply = run_snippet(request, hardening, code_dir)
        except Exception as exc:  # a worker bug must not look like a snippet's result
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        protocol.send(1, reply)
