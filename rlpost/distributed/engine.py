"""The vLLM engine behind a rollout worker: its config, its start-up as Ray actors, and the
extension that loads new policy weights into it.

    start_rollout_workers(model_path, cfg)     `cfg.num_workers` RolloutWorker actors, ready
    rollout_env(kv_cache_gib)                  what the process needs before vLLM is imported
    RolloutWorkerExtension                     methods vLLM mixes into its worker to reload weights

Weights arrive either as buckets that the learner's rank 0 put into Ray's object store, or by a
broadcast from rank 0 over a private process group (the sender side is
`rlpost.distributed.weight_sync`). Either way the methods that touch the model run inside vLLM's
worker through `RolloutWorkerExtension`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from rlpost.cache import cache_env, cache_root
from rlpost.config import ConfigError, doc
from rlpost.distributed import weight_sync
from rlpost.distributed.cluster import ActorGroup, make_actor

EXTENSION_QUALNAME = "rlpost.distributed.engine.RolloutWorkerExtension"


@dataclass
class VLLMConfig:
    num_workers: int = doc("Rollout workers (one vLLM engine each).", 1)
    num_cpus: float = doc("Ray CPUs reserved per rollout worker; fractions let phases time-share a small box.", 1.0)
    num_gpus: float = doc("GPUs per rollout worker (0 on CPU).", 0.0)
    dtype: str = doc(
        "Engine dtype: 'bfloat16' (fast on AVX-512-bf16 CPUs and GPUs; float32 where the device has no bf16 "
        "arithmetic) or 'float32'.",
        "bfloat16",
    )
    max_model_len: int = doc("Prompt + completion tokens the engine accepts.", 1024)
    kv_cache_gib: float = doc(
        "KV cache size in GiB (committed at start on CPU); 0: vLLM sizes it from gpu_memory_utilization (GPUs only).",
        1.0,
    )
    enforce_eager: bool = doc(
        "Skip torch.compile and CUDA graphs (compiling adds 15-50 s per engine start on CPU); "
        "false on GPUs captures CUDA graphs, faster decoding for a slower start.",
        True,
    )
    threads: int = doc("CPU threads per engine; 0: this machine's cores shared evenly by the workers.", 0)
    gpu_memory_utilization: float = doc(
        "Fraction of each GPU's memory the engine may use: weights, activations and, with kv_cache_gib 0, "
        "the KV cache (GPUs only).",
        0.9,
    )
    tensor_parallel_size: int = doc("GPUs per engine (tensor parallel); equals num_gpus on GPUs, 1 on CPU.", 1)
    max_num_seqs: int = doc("Sequences an engine decodes at once (GPUs only; CPU engines keep vLLM's 256).", 256)

    def validate(self):
        if self.num_gpus > 0:
            if self.tensor_parallel_size != self.num_gpus:
                # Ray hands each worker num_gpus GPUs: an engine sharded over fewer leaves some idle,
                # over more fails to start.
                raise ConfigError(
                    f"vllm.tensor_parallel_size: {self.tensor_parallel_size} must equal vllm.num_gpus "
                    f"({self.num_gpus:g}), the GPUs each rollout worker gets"
                )
        elif self.tensor_parallel_size != 1:
            raise ConfigError(
                f"vllm.tensor_parallel_size: must be 1 on CPU (vllm.num_gpus 0), got {self.tensor_parallel_size}"
            )
        if self.kv_cache_gib < 0 or (self.kv_cache_gib == 0 and self.num_gpus == 0):
            raise ConfigError(
                f"vllm.kv_cache_gib: must be more than 0 on CPU (0 lets vLLM size it, with vllm.num_gpus > 0), "
                f"got {self.kv_cache_gib}"
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"vllm.gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"vllm.max_num_seqs: must be at least 1, got {self.max_num_seqs}")

    def actor_env(self) -> dict[str, str]:
        """Environment variables of a rollout worker actor (set before vLLM is imported)."""
        # Without an explicit thread count Ray would leave an engine with a fractional CPU share
        # one OpenMP thread: a third slower rollouts on 2 cores than with both.
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.num_workers)
        return {**cache_env(), **rollout_env(self.kv_cache_gib, threads=threads), "VLLM_LOGGING_LEVEL": "WARNING"}


def start_rollout_workers(model_path: str, cfg: VLLMConfig, seed: int = 0, bundles=None) -> ActorGroup:
    """`cfg.num_workers` RolloutWorker actors on `model_path`, ready to generate; `bundles` gives
    each its (placement group, bundle index)."""
    from rlpost.distributed.rollout import RolloutWorker  # here: rollout.py imports this module

    cfg.validate()  # configs built in code (not from YAML) are checked here, before any engine starts
    # GPU-only engine arguments: a CPU engine keeps the arguments its speed and tests were measured with.
    gpu_args = (
        dict(
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            max_num_seqs=cfg.max_num_seqs,
        )
        if cfg.num_gpus
        else {}
    )
    workers = ActorGroup(
        [
            make_actor(
                RolloutWorker,
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                env=cfg.actor_env(),
                bundle=bundles[i] if bundles else None,
                # A lost engine always comes back (each call that meets one retries a bounded number
                # of times: rlpost/rl/actors.py ROLLOUT_RETRIES), resynced by the RL loop.
                max_restarts=-1,
            ).remote(
                model_path,
                dtype=cfg.dtype,
                max_model_len=cfg.max_model_len,
                seed=seed + i,
                enforce_eager=cfg.enforce_eager,
                kv_cache_gib=cfg.kv_cache_gib,
                **gpu_args,
            )
            for i in range(cfg.num_workers)
        ]
    )
    workers.call("ready")
    return workers


def rollout_env(kv_cache_gib: float, threads: int = 0) -> dict[str, str]:
    """Environment a rollout process needs before vLLM is first imported.

    Meant for ``runtime_env={"env_vars": rollout_env(...)}`` of a rollout actor; compile caches go
    below the project cache folder (`rlpost.cache`). vLLM parses VLLM_CPU_KVCACHE_SPACE as a
    whole number of GiB, so it is rounded up here; `RolloutWorker` passes the exact size itself.
    `threads` (if not 0) sets the engine's CPU threads: Ray sets OMP_NUM_THREADS to an actor's
    whole number of CPUs, one for a fractional share, and torch reads it at import.
    """
    cache = cache_root()
    # Unix socket paths are limited to ~107 bytes, so vLLM's sockets go to a short local
    # folder rather than the (possibly deep, possibly network-mounted) cache folder.
    rpc_dir = Path(tempfile.gettempdir()) / f"rlpost-{os.getuid()}" / "vllm-rpc"
    return {
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "HF_HOME": str(cache / "hf"),
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, math.ceil(kv_cache_gib))),
        "VLLM_RPC_BASE_PATH": str(rpc_dir),
        # The engine lives in the actor's own process: tensors are handed over, not serialised.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    } | ({"OMP_NUM_THREADS": str(threads)} if threads else {})


class RolloutWorkerExtension:
    """Methods mixed into vLLM's worker class (``worker_extension_cls``).

    They run where the model lives (the caller's process in in-process mode, vLLM's worker
    process otherwise) and are called through ``LLM.collective_rpc``. ``self`` is the vLLM worker.
    Names carry an ``rlpost_`` prefix so they cannot shadow a worker method.
    """

    def rlpost_load_weights(self, weights) -> float:
        """Load HF-named weights (a dict or a list of pairs); returns seconds."""
        t0 = time.perf_counter()
        if isinstance(weights, Mapping):
            weights = weights.items()
        self._rlpost_reload(weights)
        return time.perf_counter() - t0

    def rlpost_init_weight_group(
        self, master_addr: str, master_port: int, rank: int, world_size: int, backend: str
    ) -> None:
        old = getattr(self, "_rlpost_group", None)
        if old is not None:
            old.close()
        self._rlpost_group = weight_sync.create_weight_group(
            master_addr, master_port, rank, world_size, backend=backend
        )

    def rlpost_receive_weights(self, specs) -> tuple[float, float]:
        """Receive rank 0's broadcast of `specs` and load it; returns (receive s, load s)."""
        group = getattr(self, "_rlpost_group", None)
        if group is None:
            raise RuntimeError("receive_weights called before init_weight_group")
        # RPC may turn tuples into lists; the bucket plan only needs the values.
        specs = [(name, tuple(shape), dt) for name, shape, dt in specs]
        t0 = time.perf_counter()
        # Receive everything first: a broadcast must not wait on model processing, or the
        # sender (and every other receiver) stalls behind the slowest engine.
        received = list(weight_sync.receive_broadcast(group, specs))
        t1 = time.perf_counter()
        self._rlpost_reload(received)
        return t1 - t0, time.perf_counter() - t1

    def rlpost_close_weight_group(self) -> None:
        group = getattr(self, "_rlpost_group", None)
        if group is not None:
            group.close()
            self._rlpost_group = None

    def _rlpost_reload(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        _quiet_reload_warnings()
        # Cast to the engine's dtype here (the learner's master weights are float32): vLLM would
        # convert too, but warns once per tensor on every sync.
        dtype = self.model_config.dtype
        named = ((name, t.to(dtype)) for name, t in named)
        # vLLM's layerwise reload: each layer is rebuilt from checkpoint-format (HF) tensors,
        # then its post-load processing runs again. Plain `model.load_weights` is not enough on
        # CPU, where linear weights are prepacked into kernel-specific buffers at load time.
        self.reload_weights(weights_iterator=iter(named), is_checkpoint_format=True)
        # With tied embeddings the lm_head shares the embedding Parameter but is never loaded
        # itself, so its post-load processing does not rerun; where that processing made a
        # prepacked copy (CPU GEMM kernels), the head would keep the old weights. Rebuild it
        # from the current weight: a few ms, harmless when untied, a no-op on GPU.
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        quant_method = getattr(lm_head, "quant_method", None)
        if quant_method is not None and hasattr(lm_head, "weight"):
            with torch.no_grad():
                quant_method.process_weights_after_loading(lm_head)


class _ReloadWarningFilter(logging.Filter):
    """Drops vLLM's per-sync "Failed to load weights" warnings for layers that are never sent.

    Rotary tables are computed, not loaded: a reload always "fails" to load them and vLLM puts the
    existing tables back, which is correct. A tied lm_head is the embedding's Parameter, sent
    once under the embedding's name (and its prepacked copy rebuilt in `_rlpost_reload`). The
    warnings would only fill the logs, once per sync.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(("RotaryEmbedding", "ParallelLMHead")) and "Failed to load weights" in msg)


def _quiet_reload_warnings() -> None:
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _ReloadWarningFilter) for f in log.filters):
        log.addFilter(_ReloadWarningFilter())
