"""A seccomp-BPF syscall filter for snippet processes, built by hand (no libseccomp needed).

Runs inside the sandbox worker (stdlib + ctypes only). The filter is a deny list: ordinary
Python keeps working, while the calls that reach outside the sandbox fail with EPERM:
networking (socket), debugging or memory access of other processes (ptrace,
process_vm_*, pidfd_getfd), leaving the process group (setsid, setpgid, so the worker can
always kill a snippet's whole tree), new namespaces, mounts, kernel keyrings, BPF,
io_uring (it would bypass this filter), memfd (it escapes RLIMIT_AS), execve, and module or
clock administration. Signals may only target the snippet's own process or process group.

Only x86_64 and aarch64 are covered; `supported()` says whether this machine is one.
Syscall numbers come from the kernel's asm/unistd_64.h (x86_64) and asm-generic/unistd.h
(aarch64); tests compare them with the installed headers when present.
"""

import ctypes
import errno
import os
import platform
import struct

# name: (x86_64, aarch64); None where the architecture has no such call.
DENIED_SYSCALLS = {
    "socket": (41, 198),
    "connect": (42, 203),
    "accept": (43, 202),
    "bind": (49, 200),
    "listen": (50, 201),
    "accept4": (288, 242),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_open": (434, 434),
    "pidfd_getfd": (438, 438),
    "pidfd_send_signal": (424, 424),
    "tkill": (200, 130),
    "kcmp": (312, 272),
    "setsid": (112, 157),
    "setpgid": (109, 154),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "memfd_create": (319, 279),
    "memfd_secret": (447, 447),
    "execve": (59, 221),
    "execveat": (322, 281),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "syslog": (103, 116),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "personality": (135, 92),
    "vhangup": (153, 58),
    "fanotify_init": (300, 262),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "iopl": (172, None),
    "ioperm": (173, None),
    "modify_ldt": (154, None),
    "uselib": (134, None),
}

# Calls whose first argument names the target process: allowed only towards the snippet itself.
SIGNAL_SYSCALLS = {
    "kill": (62, 129),
    "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240),
}
CLONE = (56, 220)
CLONE3 = (435, 435)  # flags sit in a struct seccomp cannot read: answer ENOSYS, libc falls back to clone

_NAMESPACE_CLONE_FLAGS = (
    0x00000080  # CLONE_NEWTIME
    | 0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

_ARCHES = {  # machine name: (column in the tables, AUDIT_ARCH value)
    "x86_64": (0, 0xC000003E),
    "aarch64": (1, 0xC00000B7),
}
_X32_SYSCALL_BIT = 0x40000000

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0_LOW = 16  # little-endian: the low 32 bits come first

_libc = ctypes.CDLL(None, use_errno=True)


def supported() -> bool:
    return platform.machine() in _ARCHES and struct.pack("=H", 1) == b"\x01\x00"


class _Program:
    """Instruction list with forward jumps to named labels, resolved at the end."""

    def __init__(self):
        self.code = []  # (opcode, jump_true label or 0, jump_false label or 0, k)
        self.labels = {}

    def emit(self, opcode, k=0, jt=0, jf=0):
        self.code.append((opcode, jt, jf, k))

    def label(self, name):
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = []
        for index, (opcode, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                offset = self.labels[target] - index - 1 if isinstance(target, str) else target
                if not 0 <= offset <= 255:
                    raise ValueError("seccomp jump out of range")
                offsets.append(offset)
            out.append(struct.pack("=HBBI", opcode, offsets[0], offsets[1], k & 0xFFFFFFFF))
        return b"".join(out)


def build(own_pid: int) -> bytes:
    """The filter program for a snippet whose main process (and process group) is own_pid."""
    column, audit_arch = _ARCHES[platform.machine()]
    p = _Program()
    p.emit(_LD_W_ABS, _OFFSET_ARCH)
    p.emit(_JEQ_K, audit_arch, jt=0, jf="kill")  # e.g. 32-bit int 0x80 calls use other numbers
    p.emit(_LD_W_ABS, _OFFSET_NR)
    if platform.machine() == "x86_64":
        p.emit(_JGE_K, _X32_SYSCALL_BIT, jt="deny", jf=0)
    for numbers in DENIED_SYSCALLS.values():
        if numbers[column] is not None:
            p.emit(_JEQ_K, numbers[column], jt="deny", jf=0)
    p.emit(_JEQ_K, CLONE3[column], jt="enosys", jf=0)
    p.emit(_JEQ_K, CLONE[column], jt="clone", jf=0)
    for numbers in SIGNAL_SYSCALLS.values():
        p.emit(_JEQ_K, numbers[column], jt="signal", jf=0)
    p.emit(_RET_K, _RET_ALLOW)

    p.label("signal")  # target pid: 0 (own group), own pid, or -own pid (own group)
    p.emit(_LD_W_ABS, _OFFSET_ARG0_LOW)
    p.emit(_JEQ_K, 0, jt="allow", jf=0)
    p.emit(_JEQ_K, own_pid, jt="allow", jf=0)
    p.emit(_JEQ_K, -own_pid, jt="allow", jf="deny")

    p.label("clone")
    p.emit(_LD_W_ABS, _OFFSET_ARG0_LOW)
    p.emit(_JSET_K, _NAMESPACE_CLONE_FLAGS, jt="deny", jf="allow")

    p.label("allow")
    p.emit(_RET_K, _RET_ALLOW)
    p.label("deny")
    p.emit(_RET_K, _RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.emit(_RET_K, _RET_ERRNO | errno.ENOSYS)
    p.label("kill")
    p.emit(_RET_K, _RET_KILL_PROCESS)
    return p.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(own_pid: int) -> None:
    """Load the filter into the calling (single-threaded) process; irreversible."""
    program = build(own_pid)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    calls = ((_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), (_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0))
    for args in calls:
        if _libc.prctl(*(ctypes.c_ulong(a) for a in args)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "seccomp: " + os.strerror(err))
