"""Optional per-worker memory and process-count caps through cgroups (v1 or v2).

RLIMIT_AS does not count tmpfs files or some shared mappings, so a memory cgroup is the
only true cap on what a snippet's tree holds; the pids controller caps fork bombs
independently of the uid-wide RLIMIT_NPROC. Creating cgroups needs write access to the
hierarchy (root, or a delegated subtree); without it the pool simply runs without them.
"""

import logging
import os
import time

log = logging.getLogger("sandbox")

_ROOT = "/sys/fs/cgroup"  # v2: the unified hierarchy; v1: one folder per controller


def _write(path: str, value) -> bool:
    try:
        with open(path, "w") as f:
            f.write(str(value))
        return True
    except OSError:
        return False


def remove_stale(prefix: str, owner_is_dead) -> None:
    """Remove empty cgroups named <prefix><pid>-... whose owning process is gone."""
    roots = [_ROOT, os.path.join(_ROOT, "memory"), os.path.join(_ROOT, "pids")]
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix) and owner_is_dead(name, prefix):
                try:
                    os.rmdir(os.path.join(root, name))
                except OSError:
                    pass


class WorkerCgroup:
    """A memory (+pids) cgroup holding one worker and everything it forks."""

    def __init__(self, memory_dir: str, pids_dir, version: int):
        self.memory_dir, self.pids_dir, self.version = memory_dir, pids_dir, version
        self._memory_limit = None

    @classmethod
    def create(cls, name: str):
        """A new cgroup, or None when this process may not create one."""
        if os.path.exists(os.path.join(_ROOT, "cgroup.controllers")):
            return cls._create_v2(name)
        memory_base = os.path.join(_ROOT, "memory")
        if not os.access(memory_base, os.W_OK):
            return None
        memory_dir = os.path.join(memory_base, name)
        try:
            os.mkdir(memory_dir)
        except OSError:
            return None
        pids_dir = os.path.join(_ROOT, "pids", name)
        try:
            os.mkdir(pids_dir)
        except OSError:
            pids_dir = None
        return cls(memory_dir, pids_dir, 1)

    @classmethod
    def _create_v2(cls, name: str):
        # Only the root cgroup is exempt from the "no processes in inner nodes" rule, so
        # create directly under it, and only when it delegates the memory controller.
        try:
            with open(os.path.join(_ROOT, "cgroup.subtree_control")) as f:
                controllers = f.read().split()
        except OSError:
            return None
        if "memory" not in controllers or not os.access(_ROOT, os.W_OK):
            return None
        path = os.path.join(_ROOT, name)
        try:
            os.mkdir(path)
        except OSError:
            return None
        _write(os.path.join(path, "memory.swap.max"), 0)
        return cls(path, path if "pids" in controllers else None, 2)

    def attach(self, pids) -> None:
        for directory in {self.memory_dir, self.pids_dir} - {None}:
            for pid in pids:
                _write(os.path.join(directory, "cgroup.procs"), pid)

    def set_memory_limit(self, limit_bytes: int) -> None:
        if limit_bytes == self._memory_limit:
            return
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        # Lowering below current usage can fail; the next request tries again.
        if _write(os.path.join(self.memory_dir, name), limit_bytes):
            self._memory_limit = limit_bytes

    def set_pids_limit(self, count: int) -> None:
        if self.pids_dir:
            _write(os.path.join(self.pids_dir, "pids.max"), count)

    def remove(self) -> None:
        for directory in {self.memory_dir, self.pids_dir} - {None}:
            for _ in range(50):  # processes take a moment to leave after being killed
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            else:
                log.debug("could not remove cgroup %s", directory)
