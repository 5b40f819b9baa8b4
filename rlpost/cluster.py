"""Where the actors run: connecting to Ray, placing the RL actor groups, moving weights between them.

    init_ray()                          attach to `ray job submit`'s cluster, or start a local one
    actors = RLActors(cfg, ...)         learner ranks + rollout workers + reward workers, placed
    actors.learners.call("train", b)    call a method on every actor of a group and gather
    actors.sync_weights()               learner rank 0 → every rollout engine

Every actor is made by `make_actor`: its resources, its environment (the cache folder layout of
rlpost/cache.py, set before it imports anything) and, in RL, its bundle of its role's placement
group. On one CPU box the bundles time-share the cores phase by phase (rollout, reward, train);
on a cluster the rollout engines spread over nodes (`placement.strategy: SPREAD`), each
DeepSpeed world packs, and `placement.resources` pins a role to the nodes that offer a custom
resource. Rendezvous addresses come from the node of the rank that hosts the store.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rlpost.cache import cache_env
from rlpost.config import ConfigError, doc
from rlpost.placement import ROLES, bundle, check_resources, deepspeed_env, rendezvous

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
        runtime_env["worker_process_setup_hook"] = "rlpost.cluster.send_output_to_run_log"
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


# ---------------------------------------------------------------------------------------------
# Rollout workers


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
        from rlpost.rollout import rollout_env

        # Without an explicit thread count Ray would leave an engine with a fractional CPU share
        # one OpenMP thread: a third slower rollouts on 2 cores than with both.
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.num_workers)
        return {**cache_env(), **rollout_env(self.kv_cache_gib, threads=threads), "VLLM_LOGGING_LEVEL": "WARNING"}


def start_rollout_workers(model_path: str, cfg: VLLMConfig, seed: int = 0, bundles=None) -> ActorGroup:
    """`cfg.num_workers` RolloutWorker actors on `model_path`, ready to generate; `bundles` gives
    each its (placement group, bundle index)."""
    from rlpost.rollout import RolloutWorker

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
                max_restarts=3,  # a dead engine comes back; rl_steps.sample_groups resyncs and reruns it
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


# ---------------------------------------------------------------------------------------------
# The RL actor groups


@dataclass
class SyncConfig:
    backend: str = doc(
        "Weight sync learner → rollout workers: 'object_store' (Ray) or 'collective' (gloo/NCCL broadcast).",
        "object_store",
    )
    every: int = doc(
        "Sync after every N learner updates. Above 1 the engines sample with stale weights: "
        "set loss.tis_cap to correct for it (truncated importance sampling).",
        1,
    )
    timeout_s: float = doc(
        "Seconds a weight sync (and the set-up of the broadcast group) may take before the run stops with "
        "WeightSyncTimeout, naming the actors that did not answer. A gloo/NCCL broadcast blocks inside the "
        "actors, so this bound is what keeps a lost or stuck engine from hanging the run; raise it for large "
        "models, slow links or busy machines.",
        300.0,
    )

    def validate(self):
        if self.backend not in ("object_store", "collective"):
            raise ConfigError(f"sync.backend: {self.backend!r} is not one of ['object_store', 'collective']")
        if self.every < 1:
            raise ConfigError(f"sync.every: must be at least 1, got {self.every}")
        if self.timeout_s <= 0:
            raise ConfigError(f"sync.timeout_s: must be more than 0, got {self.timeout_s}")


class RLActors:
    """The RL run's actors, one placement group per role: learner ranks (DeepSpeed), rollout
    workers (vLLM), reward workers and, for PPO, critic ranks (DeepSpeed, their own world), plus
    the weight transport from learner rank 0 to the engines.

    `cfg` is an RL recipe's config (sections model_path, seed, optim, deepspeed, loss, rollout,
    vllm, placement, sync, rewards, and `critic` for PPO); `verifiers` maps each task to the
    reward that checks it. `self.rendezvous` records, per process group (DeepSpeed worlds, the
    weight broadcast), the node, IP and port its store was given."""

    def __init__(self, cfg, total_steps: int, verifiers: dict[str, str]):
        import ray
        from ray.util.placement_group import placement_group

        from rlpost.learner import Learner
        from rlpost.reward_refs import RewardLoadError, absolute_reference
        from rlpost.reward_runner import RewardWorker

        p, v, world = cfg.placement, cfg.vllm, cfg.deepspeed.world_size
        critic = getattr(cfg, "critic", None)
        custom = {role: p.resources.get(role, {}) for role in ROLES}
        bundles = {
            "learner": [bundle(p.learner_cpus, p.learner_gpus, custom["learner"])] * world,
            "rollout": [bundle(v.num_cpus, v.num_gpus, custom["rollout"])] * v.num_workers,
            "reward": [bundle(p.reward_cpus, 0, custom["reward"])] * cfg.rewards.num_workers,
        }
        if critic is not None:
            bundles["critic"] = [bundle(critic.num_cpus, critic.num_gpus, custom["critic"])] * world
        check_resources(bundles)
        if cfg.deepspeed.dist_backend == "nccl" and not p.learner_gpus:
            raise ConfigError(
                "deepspeed.dist_backend: 'nccl' needs GPUs (placement.learner_gpus > 0); use 'gloo' on CPU"
            )
        strategies = {"rollout": p.strategy}  # a DeepSpeed world stays on as few nodes as possible
        self.pgs = {role: placement_group(b, strategy=strategies.get(role, "PACK")) for role, b in bundles.items()}
        ray.get([pg.ready() for pg in self.pgs.values()], timeout=600)
        self.rendezvous = {}

        # Reward workers first: a bad reward reference stops the run before the engines load.
        # File references are made absolute here: a job's actors may run in another folder.
        specs = [replace(spec, name=absolute_reference(spec.name)) for spec in cfg.rewards.functions]
        self.learners = self.rollouts = self.critics = None
        self.rewards = ActorGroup(
            [
                make_actor(
                    RewardWorker, num_cpus=p.reward_cpus, bundle=(self.pgs["reward"], i), **RewardWorker.RAY_OPTIONS
                ).remote(specs, cfg.rewards.default_reward, verifiers)
                for i in range(cfg.rewards.num_workers)
            ]
        )
        try:
            self.rewards.call("start")
        except RewardLoadError as error:
            self.shutdown()
            raise ConfigError(f"rewards.functions: {getattr(error, 'cause', error)}") from None

        common = dict(total_steps=total_steps, max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed)
        self.learners = self._deepspeed_world(
            "learner", Learner, p.learner_cpus, p.learner_gpus,
            cfg.model_path, cfg.optim, cfg.deepspeed, cfg.loss,
            reference=critic is not None, **common,  # PPO's KL reward needs the reference's logprobs
        )  # fmt: skip
        if critic is not None:
            from rlpost.critic import Critic

            self.critics = self._deepspeed_world(
                "critic", Critic, critic.num_cpus, critic.num_gpus,
                critic.path if critic.init == "reward_model" else cfg.model_path, critic,
                cfg.optim, cfg.deepspeed, replace(cfg.loss, kl_coef=0.0), **common,
            )  # fmt: skip
        self.rollouts = start_rollout_workers(
            cfg.model_path, v, cfg.seed, bundles=[(self.pgs["rollout"], i) for i in range(v.num_workers)]
        )
        self.sync_backend = cfg.sync.backend
        self.sync_timeout_s = cfg.sync.timeout_s
        # The weights' names, shapes and wire dtype (the engines') and their buckets, planned once
        # on learner rank 0 for either backend: every sync sends the same layout.
        self.weight_specs = self.learners.call("init_weight_sync", v.dtype)[0]
        if self.sync_backend == "collective":
            from rlpost.weight_sync import wait_for_sync

            self.rendezvous["weight_sync"] = rendezvous(self.pgs["learner"], 0, 1)
            _, master_addr, (port,) = self.rendezvous["weight_sync"]
            group_size = len(self.rollouts) + 1
            backend = "nccl" if v.num_gpus and p.learner_gpus else "gloo"  # NCCL needs GPUs at both ends
            joining = {
                "rollout worker": [
                    w.init_weight_group.remote(master_addr, port, i + 1, group_size, backend)
                    for i, w in enumerate(self.rollouts.actors)
                ],
                "learner rank": [self.learners[0].init_weight_group.remote(master_addr, port, group_size, backend)],
            }
            wait_for_sync(joining, f"{backend} group set-up", self.sync_timeout_s)

    def _deepspeed_world(self, role: str, cls, num_cpus: float, num_gpus: float, *args, **kwargs) -> ActorGroup:
        """One DeepSpeed world of `cls` ranks, a rank per bundle of the role's placement group. Its
        store's port is probed on rank 0's node just before the ranks start: engines starting
        meanwhile would take a port probed earlier."""
        pg = self.pgs[role]
        self.rendezvous[role] = rendezvous(pg, 0, 1)
        _, addr, (port,) = self.rendezvous[role]
        return ActorGroup(
            [
                make_actor(
                    cls, num_cpus=num_cpus, num_gpus=num_gpus, env=deepspeed_env(num_gpus), bundle=(pg, rank)
                ).remote(*args, rank=rank, master_addr=addr, master_port=port, **kwargs)
                for rank in range(pg.bundle_count)
            ]
        )

    def placement(self) -> dict:
        """Where the run's actors are: each role's node ids, one per bundle (actor) in rank
        order, and each DeepSpeed world's rendezvous (node id, IP, ports)."""
        from ray.util import placement_group_table

        where = {}
        for role, pg in self.pgs.items():
            nodes = placement_group_table(pg)["bundles_to_node_id"]
            where[role] = [nodes[i] for i in sorted(nodes)]
        return {
            "nodes": where,
            "rendezvous": {k: {"node": n, "ip": ip, "ports": ports} for k, (n, ip, ports) in self.rendezvous.items()},
        }

    def sync_weights(self) -> float:
        """Push the learner's current weights into every rollout engine; returns seconds.

        Object store: learner rank 0 puts the weights into the object store itself, bucket by
        bucket in the engines' dtype, and returns only the refs, which the engines read the
        buckets by; no weight passes through this process. Collective: rank 0 broadcasts the
        same buckets to the engines' group.

        The whole sync is bounded by sync.timeout_s: past it, WeightSyncTimeout names the
        backend and the actors that did not answer. Actors blocked in a gloo/NCCL broadcast
        cannot be interrupted from here and stay stuck: the caller's error path ends them with
        `shutdown` (and a driver that exits ends its actors with it).
        """
        from rlpost.weight_sync import wait_for_sync

        t0 = time.perf_counter()
        timeout_s = self.sync_timeout_s
        if self.sync_backend == "object_store":
            put = {"learner rank": self.learners.submit("put_weights")}  # every rank: ZeRO-3 gathers
            refs = wait_for_sync(put, "object_store", timeout_s, t0)["learner rank"][0]
            loads = {"rollout worker": self.rollouts.submit("update_weights", refs)}
            wait_for_sync(loads, "object_store", timeout_s, t0)
        else:
            calls = {
                "rollout worker": self.rollouts.submit("receive_weights", self.weight_specs),
                "learner rank": self.learners.submit("broadcast_weights"),
            }
            wait_for_sync(calls, "collective", timeout_s, t0)
        return time.perf_counter() - t0

    def save_checkpoint(self, run_dir: str | Path, step: int, state: dict) -> None:
        """Checkpoint the policy (with the loop's `state`) and the critic, if any. The critic's is
        written first: the policy's `latest` pointer then names a step the critic also has."""
        if self.critics is not None:
            self.critics.call("save_checkpoint", str(Path(run_dir) / "critic"), step, {})
        self.learners.call("save_checkpoint", str(run_dir), step, state)

    def load_latest(self, run_dir: str | Path) -> dict | None:
        """Resume the policy from its latest checkpoint and the critic from the same step; returns
        the loop's state, or None when there is no checkpoint."""
        state = self.learners.call("load_latest", str(run_dir))[0]
        if state is not None and self.critics is not None:
            if self.critics.call("load_latest", str(Path(run_dir) / "critic"), state["step"])[0] is None:
                raise FileNotFoundError(f"{run_dir}/critic has no checkpoint of step {state['step']}")
        return state

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in (self.rollouts, self.learners, self.critics, self.rewards):
            if group is not None:
                group.kill()
        for pg in self.pgs.values():
            remove_placement_group(pg)

    def resync_rollout(self, index: int) -> None:
        """Wait until rollout worker `index` is back after a restart and give it the learner's
        current weights (a restarted actor re-runs its constructor, which loads model_path)."""
        import ray

        worker = self.rollouts[index]
        deadline = time.monotonic() + 600
        while True:  # calls fail at once with ActorUnavailableError while the actor restarts
            try:
                ray.get(worker.ready.remote())
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        if self.sync_backend != "object_store":
            # The new engine is outside the broadcast group, which is formed once, with every
            # engine, at start; from now on the object store carries every sync.
            print("warning: a rollout engine restarted; weight syncs go through the object store from now on")
            self.sync_backend = "object_store"
        self.sync_weights()  # the other engines get the weights they hold: a rare, cheap repeat
