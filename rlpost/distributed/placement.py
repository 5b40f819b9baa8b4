"""Where an RL run's actors go: one placement group per role, custom resources that pin a role
to nodes, and the rendezvous of each DeepSpeed world on the node of the rank that hosts it.

    bundles = {"learner": [bundle(1, 0, {})] * world, ...}
    check_resources(bundles)                 a ConfigError instead of waiting forever
    node_id, ip, ports = rendezvous(pg, 0, 2)  where rank 0 of that group listens
"""

from __future__ import annotations

from dataclasses import dataclass

from rlpost.cache import cache_env
from rlpost.config import ConfigError, doc

ROLES = ("learner", "rollout", "reward", "critic")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class PlacementConfig:
    strategy: str = doc(
        "How the rollout workers' bundles are placed: 'PACK' (one box, time-shared) or 'SPREAD' (across "
        "nodes). Learner and critic ranks are always packed (a DeepSpeed world is fastest on one node).",
        "PACK",
    )
    learner_cpus: float = doc("CPUs per learner rank bundle.", 1.0)
    learner_gpus: float = doc("GPUs per learner rank bundle.", 0.0)
    reward_cpus: float = doc("CPUs per reward worker bundle.", 0.5)
    resources: dict[str, dict[str, float]] = doc(
        "Custom Ray resources per role (learner, rollout, reward, critic) added to each of its bundles, to "
        "pin a role to the nodes that offer them: {learner: {trainer_node: 1}} with `ray start "
        "--resources '{\"trainer_node\": 8}'` on those nodes.",
        {},
    )

    def validate(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"placement.strategy: {self.strategy!r} is not one of {list(STRATEGIES)}")
        for role, amounts in self.resources.items():
            if role not in ROLES:
                raise ConfigError(f"placement.resources.{role}: not a role; the roles are {list(ROLES)}")
            if not isinstance(amounts, dict) or not all(isinstance(v, (int, float)) for v in amounts.values()):
                raise ConfigError(f"placement.resources.{role}: must map resource names to amounts, got {amounts!r}")


def bundle(cpus: float, gpus: float, custom: dict) -> dict:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **custom}


def deepspeed_env(gpus: float) -> dict[str, str]:
    """A DeepSpeed rank's environment: its accelerator follows the GPUs its bundle has."""
    return {**cache_env(), "DS_ACCELERATOR": "cuda" if gpus else "cpu"}


def check_resources(groups: dict[str, list[dict]]) -> None:
    """Refuse bundles the cluster cannot hold: Ray would wait for them forever."""
    import ray

    need: dict[str, float] = {}
    for bundles in groups.values():
        for bundle in bundles:
            for resource, amount in bundle.items():
                need[resource] = need.get(resource, 0) + amount
    have = ray.cluster_resources()
    for resource, amount in need.items():
        if amount > have.get(resource, 0):
            raise ConfigError(
                f"placement: the actors need {amount:g} {resource} (learner ranks placement.learner_cpus/gpus, "
                "rollout workers vllm.num_cpus/gpus, reward workers placement.reward_cpus, critic ranks "
                f"critic.num_cpus/gpus, custom ones placement.resources) but the cluster has {have.get(resource, 0):g}; "
                "lower them (fractions time-share a box) or add nodes"
            )


def _node_and_ports(count: int) -> tuple[str, str, list[int]]:
    """(node id, IP, `count` free TCP ports) of the node this task runs on."""
    import socket

    import ray

    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:  # held open together so the OS hands out distinct ports
        for sock in sockets:
            sock.bind(("", 0))
        ports = [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), ports


def rendezvous(group, index: int, ports: int) -> tuple[str, str, list[int]]:
    """The node id, IP and `ports` free ports of the node that holds bundle `index` of placement
    group `group`. A process group's store listens on the node of its rank 0, which on a cluster
    need not be the driver's."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    probe = ray.remote(num_cpus=0)(_node_and_ports).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index)
    )
    return ray.get(probe.remote(ports), timeout=120)
