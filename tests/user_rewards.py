"""A user's reward file for the reward runner tests, and the reward child processes a test
started: shared by test_reward_runner.py, test_reward_failures.py and test_reward_worker.py."""

from __future__ import annotations

import os
import textwrap
from contextlib import contextmanager
from pathlib import Path

from rlpost.scoring.references import RewardSpec
from rlpost.scoring.runner import RewardRunner

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A user's reward file, written outside the project and loaded by "path.py:function".
USER_REWARDS = textwrap.dedent(
    """
    import asyncio
    import os
    import signal
    import time

    from rewards import per_sample

    def length(prompts, completions, **columns): return [float(len(c)) for c in completions]
    def with_members(prompts, completions, **columns):  # a reward with series logged beside it
        return {"reward": [1.0] * len(completions), "member_0": [0.5] * len(completions), "bad": "no"}
    def exact(prompts, completions, answer):  # no **columns: extra columns are left out
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

    def fails_on_bad(prompts, completions, **columns):
        for completion in completions:
            if "bad" in completion:
                raise ZeroDivisionError("bad sample")
        return [1.0] * len(completions)

    def always_fails(prompts, completions, **columns): raise RuntimeError("reward server unreachable")

    def fails_when_told(prompts, completions, fail, **columns):
        if any(fail):
            raise RuntimeError("told to fail")
        return [1.0] * len(completions)

    def hangs_on_hang(prompts, completions, **columns):
        if any("hang" in completion for completion in completions):
            time.sleep(600)
        return [2.0] * len(completions)

    def batch_fails_then_sample_hangs(prompts, completions, **columns):
        if len(completions) > 1:
            raise ValueError("batch too big")
        if completions[0] == "hang":
            time.sleep(600)
        return [1.0]

    # Broken results, one line each.
    def non_finite(prompts, completions, **columns): return [float("nan"), float("inf"), 1.0, 10**400]
    def too_short(prompts, completions, **columns): return [1.0]
    def not_a_list(prompts, completions, **columns): return 1.0
    def mixed_types(prompts, completions, **columns): return ["1.0", None, True, 0.5]
    def crashes(prompts, completions, **columns): os._exit(3)
    def none_on_odd(prompts, completions, **columns): return [None if i % 2 else 1.0 for i in range(len(completions))]

    async def async_length(prompts, completions, **columns):
        await asyncio.sleep(0.01)
        return [float(len(completion)) for completion in completions]

    @per_sample
    def per_sample_exact(prompt, completion, answer=None, **columns):
        return 1.0 if completion == answer else 0.0

    def kill_worker_once(prompts, completions, *, marker, **columns):
        # Kills the process that runs the reward (a Ray actor) the first time only.
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(30)
        return [1.0] * len(completions)
    """
)


def write_user_rewards(directory: Path) -> Path:
    """USER_REWARDS as my_rewards.py in `directory`, which must lie outside the project."""
    path = directory / "my_rewards.py"
    assert PROJECT_ROOT not in path.parents  # really outside the project
    path.write_text(USER_REWARDS)
    return path


@contextmanager
def runner_factory(user_file: Path):
    """Builds started RewardRunners over functions of the user file and closes them on exit."""
    runners = []

    def make(*functions, default_reward=None, max_consecutive_failed_steps=3, timeout_s=10.0, **spec_fields):
        specs = [
            RewardSpec(name=f"{user_file}:{function}", timeout_s=timeout_s, **spec_fields) for function in functions
        ]
        runner = RewardRunner(specs, default_reward, max_consecutive_failed_steps=max_consecutive_failed_steps)
        runners.append(runner)
        runner.start()
        return runner

    try:
        yield make
    finally:
        for runner in runners:
            runner.close()


def reward_children() -> set[int]:
    """Process ids of the reward child processes this test process started."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == os.getpid() and b"rlpost.scoring.process" in command:
            children.add(int(entry.name))
    return children
