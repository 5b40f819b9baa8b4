"""Connecting to Ray: a local cluster on a laptop, or the running cluster under `ray job submit`.

Actors get the cache environment (rlpost/cache.py) through the job's runtime_env, so every
process on every node builds into and reuses the same cache folder layout.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass

from rlpost.cache import cache_env
from rlpost.config import doc


def init_ray(num_cpus: int | None = None) -> None:
    """Attach to the cluster named by RAY_ADDRESS (set by `ray job submit`), else start a
    private local one with this machine's cores."""
    import ray

    if ray.is_initialized():
        return
    if threading.current_thread() is threading.main_thread():
        # Turn SIGTERM into a normal exit so Ray's exit hooks stop the local cluster's processes.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runtime_env = {"env_vars": cache_env()}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=False,
        )


@dataclass
class VLLMConfig:
    num_workers: int = doc("Rollout workers (one vLLM engine each).", 1)
    num_cpus: float = doc("Ray CPUs reserved per rollout worker; fractions let phases time-share a small box.", 1.0)
    num_gpus: float = doc("GPUs per rollout worker (0 on CPU).", 0.0)
    dtype: str = doc("Engine dtype: 'bfloat16' (fast on AVX-512-bf16 CPUs and GPUs) or 'float32'.", "bfloat16")
    max_model_len: int = doc("Prompt + completion tokens the engine accepts.", 1024)
    kv_cache_gib: float = doc("KV cache size in GiB (committed at start on CPU).", 1.0)
    enforce_eager: bool = doc("Skip torch.compile (compiling adds 15-50 s per engine start on CPU).", True)
    threads: int = doc("CPU threads per engine; 0: this machine's cores shared evenly by the workers.", 0)

    def actor_env(self) -> dict[str, str]:
        """Environment variables of a rollout worker actor (set before vLLM is imported)."""
        from rlpost.cache import cache_root
        from rlpost.rollout import rollout_env

        # Without an explicit thread count Ray would leave an engine with a fractional CPU share
        # one OpenMP thread: a third slower rollouts on 2 cores than with both.
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.num_workers)
        return {
            **cache_env(),
            **rollout_env(str(cache_root()), self.kv_cache_gib, threads=threads),
            "VLLM_LOGGING_LEVEL": "WARNING",
        }


def start_rollout_workers(model_path: str, cfg: VLLMConfig, seed: int = 0) -> list:
    """Start `cfg.num_workers` RolloutWorker actors on `model_path` and wait until they are ready."""
    import ray

    from rlpost.rollout import RolloutWorker

    actor_cls = ray.remote(RolloutWorker)
    workers = [
        actor_cls.options(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, runtime_env={"env_vars": cfg.actor_env()}
        ).remote(
            model_path,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            seed=seed + i,
            enforce_eager=cfg.enforce_eager,
            kv_cache_gib=cfg.kv_cache_gib,
        )
        for i in range(cfg.num_workers)
    ]
    ray.get([w.ready.remote() for w in workers])
    return workers
