"""What running one snippet produced."""

from dataclasses import dataclass

# Values of Result.reason.
OK = "ok"  # exited with status 0
ERROR = "error"  # exited with a non-zero status (an uncaught exception gives 1)
SIGNAL = "signal"  # killed by a signal: crash, CPU or memory cgroup limit
TIMEOUT = "timeout"  # still running at the wall-clock timeout; killed
OUTPUT_LIMIT = "output_limit"  # wrote more than max_output_bytes to stdout or stderr; killed
SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed (worker died, setup failed)


@dataclass
class Result:
    stdout: str
    stderr: str
    exit_code: int  # negative: killed by that signal number (as in subprocess)
    timed_out: bool
    reason: str  # one of the constants above
    duration_s: float  # wall time of the whole request as seen by the caller
    tier: str  # isolation tier that ran it: "bwrap", "landlock-seccomp" or "rlimits"
    truncated: bool = False  # stdout or stderr was cut at max_output_bytes

    @property
    def ok(self) -> bool:
        return self.reason == OK


class SandboxUnavailable(RuntimeError):
    """No isolation tier works on this machine (and insecure execution was not allowed)."""
