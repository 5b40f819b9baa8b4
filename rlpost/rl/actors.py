"""The RL run's actors: learner ranks, rollout workers, reward workers and PPO's critic ranks,
placed by role, and the weight sync from learner rank 0 to every engine.

    actors = RLActors(cfg, ...)         learner ranks + rollout workers + reward workers, placed
    actors.learners.call("train", b)    call a method on every actor of a group and gather
    actors.sync_weights()               learner rank 0 → every rollout engine
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from rlpost.config import ConfigError, doc
from rlpost.distributed.cluster import ActorGroup, make_actor
from rlpost.distributed.engine import start_rollout_workers
from rlpost.distributed.placement import ROLES, bundle, check_resources, deepspeed_env, rendezvous
from rlpost.distributed.weight_sync import wait_for_sync
from rlpost.rl.critic import Critic
from rlpost.rl.learner import Learner
from rlpost.scoring.references import RewardLoadError, absolute_reference
from rlpost.scoring.runner import RewardWorker


@dataclass
class SyncConfig:
    backend: str = doc(
        "Weight sync learner → rollout workers: 'object_store' (Ray) or 'collective' (gloo/NCCL broadcast).",
        "object_store",
    )
    every: int = doc(
        "Sync after every N learner updates. Above 1 the engines sample with stale weights: "
        "set loss.tis_cap or loss.correction to correct for it (importance sampling against the engine).",
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


# Attempts after a rollout worker dies (Ray restarts it, any number of times over a run) before
# the step gives up.
ROLLOUT_RETRIES = 3


class RLActors:
    """The RL run's actors, one placement group per role: learner ranks (DeepSpeed), rollout
    workers (vLLM), reward workers and, for PPO, critic ranks (DeepSpeed, their own world), plus
    the weight transport from learner rank 0 to the engines.

    `cfg` is an RL recipe's config (rlpost/rl/config.py: RLConfig), `critic` PPO's critic
    section (None: no critic ranks); `verifiers` maps each task to the
    reward that checks it. `self.rendezvous` records, per process group (DeepSpeed worlds, the
    weight broadcast), the node, IP and port its store was given."""

    def __init__(self, cfg, total_steps: int, verifiers: dict[str, str], critic=None):
        import ray
        from ray.util.placement_group import placement_group

        p, v, world = cfg.placement, cfg.vllm, cfg.deepspeed.world_size
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
        self.reward_workers = ActorGroup(
            [
                make_actor(
                    RewardWorker, num_cpus=p.reward_cpus, bundle=(self.pgs["reward"], i), **RewardWorker.RAY_OPTIONS
                ).remote(specs, cfg.rewards.default_reward, verifiers)
                for i in range(cfg.rewards.num_workers)
            ]
        )
        try:
            self.reward_workers.call("start")
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

        t0 = time.perf_counter()
        timeout_s = self.sync_timeout_s
        if self.sync_backend == "object_store":
            put = {"learner rank": self.learners.submit("put_weights")}  # every rank: ZeRO-3 gathers
            refs = wait_for_sync(put, "object_store", timeout_s, t0)["learner rank"][0]
            self._load_engines(refs, t0)
        else:
            calls = {
                "rollout worker": self.rollouts.submit("receive_weights", self.weight_specs),
                "learner rank": self.learners.submit("broadcast_weights"),
            }
            wait_for_sync(calls, "collective", timeout_s, t0)
        return time.perf_counter() - t0

    def _load_engines(self, refs: list, start: float) -> None:
        """Every engine loads the weight buckets `refs` (object store). An engine lost meanwhile
        is waited for (Ray restarts it) and loads them again, up to ROLLOUT_RETRIES times, so a
        sync survives an engine that dies in it."""
        import ray

        loads = self.rollouts.submit("update_weights", refs)
        try:
            wait_for_sync({"rollout worker": loads}, "object_store", self.sync_timeout_s, start)
            return
        except ray.exceptions.RayActorError:
            pass
        for index, ref in enumerate(loads):
            for attempt in range(ROLLOUT_RETRIES + 1):
                try:
                    ray.get(ref)
                    break
                except ray.exceptions.RayActorError as error:
                    if attempt == ROLLOUT_RETRIES:
                        raise
                    print(f"warning: rollout worker {index} died during a weight sync ({type(error).__name__}); "
                          "waiting for its restart to load the weights again", flush=True)  # fmt: skip
                    self.wait_restarted(index)
                    ref = self.rollouts[index].update_weights.remote(refs)

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

        for group in (self.rollouts, self.learners, self.critics, self.reward_workers):
            if group is not None:
                group.kill()
        for pg in self.pgs.values():
            remove_placement_group(pg)

    def resync_rollout(self, index: int) -> None:
        """Wait until rollout worker `index` is back after a restart and give it the learner's
        current weights (a restarted actor re-runs its constructor, which loads model_path)."""
        self.wait_restarted(index)
        if self.sync_backend != "object_store":
            # The new engine is outside the broadcast group, which is formed once, with every
            # engine, at start; from now on the object store carries every sync.
            print("warning: a rollout engine restarted; weight syncs go through the object store from now on")
            self.sync_backend = "object_store"
        self.sync_weights()  # the other engines get the weights they hold: a rare, cheap repeat

    def wait_restarted(self, index: int) -> None:
        """Return once rollout worker `index` answers again (Ray restarts a lost one)."""
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
