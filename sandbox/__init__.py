"""Isolated Python execution for tool calls and code-with-tests rewards.

    import sandbox
    result = sandbox.run("print(1 + 1)")          # Result(stdout="2\\n", reason="ok", ...)
    with sandbox.SandboxPool(num_workers=2) as pool:
        results = pool.run_batch(["print(i)" for i in range(8)], timeout_s=2)

Each snippet runs in a forked child of a long-lived worker (inside bubblewrap when
available, always as an unprivileged uid) confined by Landlock, seccomp and rlimits; see
launch.py for the isolation tiers and worker.py for the per-snippet hardening.
"""

from .pool import SandboxPool, default_pool, detect_tier, run
from .result import Result, SandboxUnavailable

__all__ = ["Result", "SandboxPool", "SandboxUnavailable", "default_pool", "detect_tier", "run"]
