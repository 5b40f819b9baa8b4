"""Ray plumbing: connecting to a cluster, making actors, and calling a group of them at once.

    init_ray()                          attach to `ray job submit`'s cluster, or start a local one
    make_actor(cls, num_cpus=..)        `cls` as a Ray actor class with its resources and environment
    group.call("method", ...)           run a method on every actor of an ActorGroup and gather

Every actor is made by `make_actor`: its resources, its environment (the cache folder layout of
rlpost/cache.py, set before it imports anything) and, in RL, its bundle of its role's placement
group (rlpost/distributed/placement.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from rlpost.cache import cache_env

RUN_LOG_VAR = "RLPOST_RUN_LOG"


def init_ray(num_cpus: int | None = None, run_log: str | Path | None = None) -> None:
    """Attach to the cluster named by RAY_ADDRESS (set by `ray job submit`), else start a
    private local one with this machine's cores. With `run_log`, every actor's output (library
    warnings, engine start-up notices) goes to that file instead of the console."""
    import ray

    if ray.is_initialized():
        return
    if threading.current_thread() is threading.main_thread():
        # Turn SIGTERM into a normal exit so Ray's exit hooks stop the local cluster's processes.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runtime_env: dict = {"env_vars": cache_env()}
    if run_log:
        runtime_env["env_vars"][RUN_LOG_VAR] = str(Path(run_log).resolve())
        runtime_env["worker_process_setup_hook"] = "rlpost.distributed.cluster.send_output_to_run_log"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=True)
    else:
        # address="local": a new cluster even while another runs on this machine (another run,
        # a `ray start` head), which ray.init would otherwise join, refusing num_cpus.
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=False,
        )


def send_output_to_run_log() -> None:
    """Ray worker set-up hook: point this process's stdout and stderr (file descriptors, so C++
    output too) at the run's log file. Errors still reach the driver as exceptions."""
    path = Path(os.environ[RUN_LOG_VAR])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(fd, stream.fileno())
    os.close(fd)


def make_actor(cls, *, num_cpus: float, num_gpus: float = 0.0, env: dict | None = None, bundle=None, **options):
    """`cls` as a Ray actor class with its resources and environment variables; `bundle` is
    (placement group, bundle index) to pin it there. Call `.remote(...)` on the result."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if bundle is not None:
        group, index = bundle
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=index
        )
    return ray.remote(cls).options(
        num_cpus=num_cpus, num_gpus=num_gpus, runtime_env={"env_vars": env or cache_env()}, **options
    )


class ActorGroup:
    """Actors of one role. `call` runs a method on every one of them at once and gathers the
    results in actor order; `submit` returns the object refs instead."""

    def __init__(self, actors: list):
        self.actors = actors

    def submit(self, method: str, *args, **kwargs) -> list:
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def call(self, method: str, *args, **kwargs) -> list:
        import ray

        return ray.get(self.submit(method, *args, **kwargs))

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, index: int):
        return self.actors[index]

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def mean_over_ranks(per_rank: list[dict]) -> dict:
    """The ranks' metrics averaged key by key (each rank reports the same keys)."""
    return {k: sum(r[k] for r in per_rank) / len(per_rank) for k in per_rank[0]}
