"""The sandbox worker: a long-lived, single-threaded process that runs one snippet per fork.

Started by the pool as `python -I -S -B -c <boot> <code dir> <config json>`, inside
bubblewrap when available. It only ever imports the stdlib and its sibling modules
(copied next to it by the pool), so it runs under any Python 3.9+ the sandbox can see.

Per request (see protocol.py) it forks a child that confines itself, in this order:
own process group, death signal tied to the worker, stdio on fresh pipes, Landlock
(read-only system paths, writable scratch, no execve), every other fd closed, rlimits
(CPU, address space, processes, file size, open files, no core dumps), seccomp; then it runs
the code in a fresh `__main__` namespace like `python -I -c`. The worker feeds stdin,
collects stdout/stderr up to the byte limit, enforces the wall-clock timeout, and afterwards
kills and reaps everything the snippet left behind before answering.
"""

import atexit
import builtins
import ctypes
import io
import json
import math
import os
import resource
import select
import shutil
import signal
import stat
import sys
import time
import traceback
import types

from . import landlock, protocol, seccomp_filter

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
SETUP_FAILED_EXIT = 125
SETUP_FAILED_MARKER = "sandbox setup failed:"
_READ_CHUNK = 65536
_DRAIN_SECONDS = 1.0

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    zero = ctypes.c_ulong(0)
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), zero, zero, zero) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _drop_privileges(uid: int, gid: int) -> None:
    """Become uid/gid for good (real, effective and saved ids) and shed every capability."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # Changing all uids away from 0 clears the effective and permitted sets; the inheritable
    # set would survive, so zero it explicitly with capset().
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    if _libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "capset: " + os.strerror(err))
    if os.getuid() == 0 or os.geteuid() == 0:
        raise RuntimeError("still root after dropping privileges")


class Hardening:
    """What each snippet child applies to itself; decided once when the worker starts."""

    def __init__(self, config: dict):
        self.scratch = config["scratch"]
        # Writable folders: the scratch folder, plus a private /dev/shm inside bwrap (needed
        # by multiprocessing locks; never the host's, which may hold Ray's object store).
        self.write_paths = [self.scratch] + list(config.get("extra_write_paths", []))
        self.folder_modes = {path: stat.S_IMODE(os.stat(path).st_mode) for path in self.write_paths}
        # The interpreter's own installation must stay readable for imports.
        self.read_paths = list(config["read_paths"]) + sorted({sys.base_prefix, sys.base_exec_prefix})
        self.landlock_abi = landlock.abi_version()
        self.seccomp = seccomp_filter.supported()
        self.require_landlock = config.get("require_landlock", False)
        self.require_seccomp = config.get("require_seccomp", False)
        self.landlock_ruleset = None
        if self.landlock_abi:
            self.landlock_ruleset = landlock.build_ruleset(
                self.landlock_abi,
                read_paths=self.read_paths,
                write_paths=self.write_paths,
                read_write_files=["/dev/null", "/dev/zero"],
            )

    def apply(self, request: dict) -> None:
        if self.landlock_ruleset is not None:
            landlock.enforce(self.landlock_ruleset)
        elif self.require_landlock:
            raise OSError("Landlock is required but unavailable")
        os.closerange(3, 1 << 20)  # protocol pipes, pidfds, anything inherited from the worker
        cpu_s = max(1, math.ceil(float(request["timeout_s"]))) + 1
        limits = {
            resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),
            resource.RLIMIT_AS: (int(request["memory_mb"]) << 20,) * 2,
            resource.RLIMIT_NPROC: (int(request["max_processes"]),) * 2,
            resource.RLIMIT_FSIZE: (int(request["max_file_mb"]) << 20,) * 2,
            resource.RLIMIT_NOFILE: (int(request["max_open_files"]),) * 2,
            resource.RLIMIT_CORE: (0, 0),
        }
        for kind, (soft, hard) in limits.items():
            resource.setrlimit(kind, (soft, hard))
        if self.seccomp:
            seccomp_filter.install(os.getpid())
        elif self.require_seccomp:
            raise OSError("seccomp is required but unsupported on this architecture")


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
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
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


def run_snippet(request: dict, hardening: Hardening, code_dir: str) -> dict:
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
    pending_stdin = memoryview(request.get("stdin", "").encode("utf-8", errors="replace"))
    for fd in (stdin_w, stdout_r, stderr_r):
        os.set_blocking(fd, False)
    if not pending_stdin:
        os.close(stdin_w)
        stdin_w = None

    poller = select.poll()
    by_fd = {out.fd: out, err.fd: err}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    if exit_fd is not None:
        poller.register(exit_fd, select.POLLIN)
    if stdin_w is not None:
        poller.register(stdin_w, select.POLLOUT)
    deadline = started + float(request["timeout_s"])
    timed_out = exited = False
    status = None
    while not (out.overflowed or err.overflowed):
        wait_s = deadline - time.monotonic()
        if wait_s <= 0:
            timed_out = True
            break
        if exit_fd is None:
            wait_s = min(wait_s, 0.01)  # no pidfd: poll the child's state
        for fd, _events in poller.poll(wait_s * 1000):
            if fd == exit_fd:
                exited = True
            elif fd == stdin_w:
                try:
                    pending_stdin = pending_stdin[os.write(stdin_w, pending_stdin[:_READ_CHUNK]) :]
                except BlockingIOError:
                    pass
                except OSError:  # the snippet closed its stdin
                    pending_stdin = pending_stdin[:0]
                if not pending_stdin:
                    poller.unregister(stdin_w)
                    os.close(stdin_w)
                    stdin_w = None
            else:
                collector = by_fd[fd]
                collector.read()
                if not collector.open:
                    poller.unregister(fd)
        if exit_fd is None and not exited:
            reaped, status = os.waitpid(pid, os.WNOHANG)
            exited = reaped != 0
        if exited:
            break

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
    # Every writer is dead now, so the pipes reach EOF quickly; collect what is left.
    drain_deadline = time.monotonic() + _DRAIN_SECONDS
    for collector in (out, err):
        os.set_blocking(collector.fd, True)
        while collector.open and not collector.overflowed and time.monotonic() < drain_deadline:
            if not select.select([collector.fd], [], [], max(0.0, drain_deadline - time.monotonic()))[0]:
                break
            collector.read()
    for fd in (stdin_w, stdout_r, stderr_r, exit_fd):
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
        _drop_privileges(*config["drop_to"])
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("refusing to run snippets as root")
    _prctl(_PR_SET_DUMPABLE, 0)  # other processes of this uid may not ptrace or read our memory
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans of a snippet come back to us to be killed
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
