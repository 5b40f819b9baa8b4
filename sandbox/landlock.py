"""Landlock: restrict a process's filesystem access (and, on newer kernels, TCP and signals).

Runs inside the sandbox worker (stdlib + ctypes only). The worker builds one ruleset when it
starts (`build_ruleset`); each child that will run a snippet enforces it on itself
(`enforce`): reads only beneath an allowlist of system paths, writes only beneath the scratch
folder, `execve` nowhere. The restriction is inherited by every process the snippet forks
and cannot be lifted.

Kernel interface: linux/landlock.h (ABI 1 = Linux 5.13; ABI 4 adds TCP rules, ABI 6 adds
scoping of abstract unix sockets and signals).
"""

import ctypes
import os
import stat
import struct

_SYS_CREATE_RULESET = 444  # same number on every architecture (new-style syscall table)
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem access rights, by the ABI that introduced them.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

# Rights that make sense on a non-directory; the kernel rejects the others for files.
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number, *args):
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def abi_version() -> int:
    """The Landlock ABI the kernel offers, 0 when Landlock is missing or disabled."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _add_path_rule(ruleset_fd: int, path: str, rights: int) -> None:
    try:
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path missing on this machine needs no rule
    try:
        if not stat.S_ISDIR(os.fstat(path_fd).st_mode):
            rights &= _FILE_RIGHTS
        if not rights:
            return
        attr = struct.pack("=Qi", rights, path_fd)  # struct landlock_path_beneath_attr (packed)
        buf = ctypes.create_string_buffer(attr, len(attr))
        _syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(_RULE_PATH_BENEATH), buf, ctypes.c_uint32(0))
    finally:
        os.close(path_fd)


def build_ruleset(abi: int, read_paths, write_paths, read_write_files=()) -> int:
    """Create a ruleset (an fd) that `enforce` applies; built once, enforced per snippet.

    read_paths: files and folders readable (with their contents), never writable.
    write_paths: folders where anything but execve is allowed (the scratch folder).
    read_write_files: single files opened for reading and writing (/dev/null).
    Also denies all TCP bind/connect (ABI >= 4) and signals or abstract unix sockets
    towards processes outside the sandbox (ABI >= 6).
    """
    if abi < 1:
        raise OSError("Landlock is not available on this kernel")
    handled_fs = _handled_fs(abi)
    # struct landlock_ruleset_attr grew with the ABI; pass only the fields this kernel knows.
    if abi >= 6:
        scopes = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        attr = struct.pack("=QQQ", handled_fs, NET_BIND_TCP | NET_CONNECT_TCP, scopes)
    elif abi >= 4:
        attr = struct.pack("=QQ", handled_fs, NET_BIND_TCP | NET_CONNECT_TCP)
    else:
        attr = struct.pack("=Q", handled_fs)
    attr_buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset_fd = _syscall(_SYS_CREATE_RULESET, attr_buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    try:
        for path in read_paths:
            _add_path_rule(ruleset_fd, path, FS_READ_FILE | FS_READ_DIR)
        for path in read_write_files:
            _add_path_rule(ruleset_fd, path, FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0))
        for path in write_paths:
            _add_path_rule(ruleset_fd, path, handled_fs & ~FS_EXECUTE)
    except BaseException:
        os.close(ruleset_fd)
        raise
    return ruleset_fd


def enforce(ruleset_fd: int) -> None:
    """Confine the calling process (and all it forks) by the ruleset, irreversibly.

    Enforcing only reads the ruleset, so many forked children may share one.
    """
    # Required so an unprivileged process may restrict itself; also blocks setuid gains.
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
