"""How the sandbox worker and each snippet child confine themselves.

The worker drops root for good before it reads any request (`drop_privileges`); each forked
snippet child applies `Hardening` to itself: Landlock (read-only system paths, writable
scratch, no execve), every inherited fd closed, rlimits (CPU, address space, processes, file
size, open files, no core dumps), then seccomp. Like the worker, this module imports only the
stdlib and its sibling modules, since it is staged next to the worker.
"""

import ctypes
import math
import os
import resource
import stat
import sys

from . import landlock, seccomp_filter

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    """prctl(2) with one argument; OSError on failure."""
    zero = ctypes.c_ulong(0)
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), zero, zero, zero) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def drop_privileges(uid: int, gid: int) -> None:
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
