"""How a sandbox worker process is started for each isolation tier.

Tiers, strongest first:
  "bwrap"            bubblewrap namespaces (pid, net, ipc, uts, mount with read-only system
                     folders and size-limited tmpfs /tmp and /dev/shm), worker as uid 65534,
                     plus the per-snippet hardening (Landlock, seccomp, rlimits).
  "landlock-seccomp" no namespaces: the worker runs on the host as uid 65534 (when started
                     by root) and relies on the per-snippet hardening alone.
  "rlimits"          whatever hardening the kernel offers, none required; insecure, only on
                     explicit request.

Why root is handled specially: bwrap started by root maps the sandbox user onto host root,
and an unprivileged bwrap cannot bind an interpreter living under /root. So under root,
bwrap runs without a user namespace, keeps only CAP_SETUID/CAP_SETGID, and the worker
permanently drops to 65534 before it reads any request. Started by any other user, bwrap
runs unprivileged in a user namespace and the worker keeps that user's id.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

TIERS = ("bwrap", "landlock-seccomp", "rlimits")
SANDBOX_UID = SANDBOX_GID = 65534  # "nobody"
STAGING_PREFIX = "rlpost-sandbox-"
WORKER_PACKAGE = "sandbox_worker"  # name of the staged copy of the worker-side modules
WORKER_MODULES = ("worker.py", "hardening.py", "protocol.py", "landlock.py", "seccomp_filter.py")
CODE_DIR_IN_SANDBOX = "/opt/sandbox-worker"
SCRATCH_IN_SANDBOX = "/tmp/work"
WORKER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_BOOT = f"import sys; sys.path.insert(0, sys.argv[1]); from {WORKER_PACKAGE}.worker import main; main(sys.argv[2])"

# Readable inside the sandbox (Landlock), besides the interpreter's own installation.
SYSTEM_READ_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/urandom",
    "/dev/random",
    "/dev/full",
)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


@dataclass
class Settings:
    """Pool-wide knobs that shape the worker processes."""

    python: str = ""  # interpreter for snippets; default: this process's base interpreter
    tmpfs_mb: int = 64  # size of /tmp (the scratch folder lives there) in the bwrap tier
    shm_mb: int = 16  # size of the private /dev/shm in the bwrap tier
    preload: tuple = ("math", "re", "json", "collections", "itertools", "functools", "random", "string")


@dataclass
class WorkerLaunch:
    argv: list
    popen_kwargs: dict = field(default_factory=dict)
    own_pid_namespace: bool = False  # killing the worker then kills every snippet process


def running_as_root() -> bool:
    return os.geteuid() == 0


@functools.lru_cache(maxsize=None)
def bwrap_path():
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=None)
def _bwrap_supports(option: str) -> bool:
    try:
        help_text = subprocess.run([bwrap_path(), "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return option in help_text


def base_interpreter() -> str:
    """This process's interpreter outside any virtualenv (snippets see the stdlib only)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@functools.lru_cache(maxsize=None)
def _usable_by_sandbox_user(python: str) -> bool:
    probe = [python, "-I", "-S", "-c", "import encodings, json, ctypes, select"]
    try:
        return (
            subprocess.run(
                probe,
                user=SANDBOX_UID,
                group=SANDBOX_GID,
                extra_groups=[],
                env=WORKER_ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=20,
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def interpreter_for(tier: str, settings: Settings) -> str:
    """Pick a Python the worker can run in this tier.

    Without a mount namespace, the uid-65534 worker must reach the interpreter on the host
    filesystem; one under /root (pyenv) is not reachable, so fall back to a system Python.
    """
    preferred = settings.python or base_interpreter()
    if tier == "bwrap" or not running_as_root():
        return preferred
    for candidate in (preferred, "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _usable_by_sandbox_user(candidate):
            return candidate
    raise OSError(f"no Python interpreter is usable by uid {SANDBOX_UID} (tried {preferred})")


def _interpreter_prefix(python: str) -> str:
    """The installation folder holding bin/ and lib/ of an interpreter binary."""
    return os.path.dirname(os.path.dirname(os.path.realpath(python)))


class Staging:
    """A private folder with the worker's code, logs and (outside bwrap) scratch folders."""

    def __init__(self):
        # The owner's pid in the name lets a later pool remove it if this process is killed.
        self.root = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")
        os.chmod(self.root, 0o755)  # the worker's uid must read its code
        self.code_dir = os.path.join(self.root, "code")
        package_dir = os.path.join(self.code_dir, WORKER_PACKAGE)
        os.makedirs(package_dir)
        source_dir = os.path.dirname(os.path.abspath(__file__))
        for name in WORKER_MODULES:
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(package_dir, name))
        open(os.path.join(package_dir, "__init__.py"), "w").close()
        for directory, _, files in os.walk(self.code_dir):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        self.log_dir = os.path.join(self.root, "logs")
        os.mkdir(self.log_dir, 0o700)

    def host_scratch(self, index: int) -> str:
        path = os.path.join(self.root, f"scratch-{index}")
        os.makedirs(path, mode=0o700, exist_ok=True)
        if running_as_root():
            os.chown(path, SANDBOX_UID, SANDBOX_GID)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def owner_is_dead(name: str, prefix: str) -> bool:
    """For names like <prefix><pid>-...: whether that pid no longer exists."""
    pid = name[len(prefix) :].split("-", 1)[0]
    return pid.isdigit() and not os.path.exists(f"/proc/{pid}")


def remove_stale_staging() -> None:
    """Delete staging folders left by pools whose process was killed before closing."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        if name.startswith(STAGING_PREFIX) and owner_is_dead(name, STAGING_PREFIX):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def _bwrap_argv(python: str, staging: Staging, settings: Settings) -> list:
    argv = [
        bwrap_path(),
        "--die-with-parent",  # the sandbox dies with the pool process
        "--new-session",  # no controlling terminal to inject keystrokes into
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
    ]
    if running_as_root():
        # No user namespace (it would map the sandbox onto host root); the worker drops to
        # 65534 itself, which needs exactly these two capabilities.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]
        if _bwrap_supports("--disable-userns"):
            argv.append("--disable-userns")
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in _SYSTEM_FILES:
        argv += ["--ro-bind-try", path, path]
    prefix = _interpreter_prefix(python)
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        # Bind the installation at its own path (its binary may hard-code it, e.g. RPATH),
        # creating traversable parents: they are empty folders in the sandbox.
        parents = []
        parent = os.path.dirname(prefix)
        while parent not in ("/", ""):
            parents.append(parent)
            parent = os.path.dirname(parent)
        for parent in reversed(parents):
            argv += ["--perms", "0755", "--dir", parent]
        argv += ["--ro-bind", prefix, prefix]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(settings.tmpfs_mb << 20),
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--size",
        str(settings.shm_mb << 20),
        "--perms",
        "1777",
        "--tmpfs",
        "/dev/shm",
        "--ro-bind",
        staging.code_dir,
        CODE_DIR_IN_SANDBOX,
        "--chdir",
        "/",
    ]
    return argv


def worker_launch(tier: str, index: int, staging: Staging, settings: Settings) -> WorkerLaunch:
    """The command and process options for worker number `index` in `tier`."""
    if tier not in TIERS:
        raise ValueError(f"unknown sandbox tier {tier!r}; expected one of {TIERS}")
    python = interpreter_for(tier, settings)
    config = {
        "read_paths": list(SYSTEM_READ_PATHS),
        "preload": list(settings.preload),
        "require_landlock": tier == "landlock-seccomp",
        "require_seccomp": tier == "landlock-seccomp",
    }
    interpreter_argv = [python, "-I", "-S", "-B", "-c", _BOOT]
    if tier == "bwrap":
        if not bwrap_path():
            raise OSError("bwrap (Debian/Ubuntu package bubblewrap) is not installed")
        config.update(
            code_dir=CODE_DIR_IN_SANDBOX,
            scratch=SCRATCH_IN_SANDBOX,
            drop_to=[SANDBOX_UID, SANDBOX_GID] if running_as_root() else None,
        )
        config["read_paths"].append("/proc")  # the sandbox's own procfs: only its processes
        config["extra_write_paths"] = ["/dev/shm"]  # private, size-limited tmpfs
        argv = _bwrap_argv(python, staging, settings) + interpreter_argv + [CODE_DIR_IN_SANDBOX, json.dumps(config)]
        return WorkerLaunch(argv, {"start_new_session": True}, own_pid_namespace=True)

    config.update(code_dir=staging.code_dir, scratch=staging.host_scratch(index), drop_to=None)
    argv = interpreter_argv + [staging.code_dir, json.dumps(config)]
    # A new session: snippets cannot leave it (seccomp), so the pool can find and kill them.
    kwargs = {"start_new_session": True, "cwd": "/"}
    if running_as_root():
        kwargs.update(user=SANDBOX_UID, group=SANDBOX_GID, extra_groups=[])
    return WorkerLaunch(argv, kwargs)
