"""A Ray cluster of several nodes simulated on one box: every role pinned to its own node by a
custom resource, the rendezvous taken from the learner's node, the collective weight sync across
nodes. (Tested here on one CPU box; real multi-machine clusters and GPUs are not.)"""

from __future__ import annotations

import json

import pytest
from helpers import (
    assert_a_busy_engine_times_the_sync_out,
    engine_greedy,
    grpo_config,
    load_recipe,
    metrics,
    sync_check_prompts,
    train_on_random_tokens,
    transformers_greedy,
)

from rlpost.config import ConfigError

ROLE_NODES = {"learner": "learner_node", "rollout": "rollout_node", "reward": "reward_node"}
PIN_ROLES = ["--placement.resources", "{" + ", ".join(f"{r}: {{{n}: 1}}" for r, n in ROLE_NODES.items()) + "}"]
MULTINODE_ARGS = [
    *PIN_ROLES,
    "--sync.backend",
    "collective",
    "--rewards.num_workers",
    "1",
    "--vllm.dtype",
    "float32",
    "--deepspeed.bf16",
    "false",
]


def test_placement_resources_are_checked_by_role():
    from rlpost.distributed.placement import PlacementConfig

    PlacementConfig(resources={"learner": {"gpu_box": 1}}).validate()
    with pytest.raises(ConfigError, match=r"placement.resources.trainer: not a role"):
        PlacementConfig(resources={"trainer": {"gpu_box": 1}}).validate()
    with pytest.raises(ConfigError, match=r"placement.resources.reward: must map"):
        PlacementConfig(resources={"reward": {"gpu_box": "many"}}).validate()


@pytest.fixture(scope="module")
def three_nodes():
    """A head without CPUs (only the driver attaches there) and one node per role, each offering
    its role's custom resource; returns role → node id."""
    import ray
    from ray.cluster_utils import Cluster

    from rlpost.cache import cache_env

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {
        role: cluster.add_node(num_cpus=2 if role != "reward" else 1, resources={name: 1})
        for role, name in ROLE_NODES.items()
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": cache_env()}, configure_logging=False)
    yield {role: node.node_id for role, node in nodes.items()}
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_a_role_asking_for_a_resource_no_node_has_is_refused(sft_run, three_nodes, tmp_path):
    from rlpost.rl.actors import RLActors

    cfg = grpo_config(sft_run / "model", tmp_path, ["--placement.resources", "{learner: {gpu_box: 1}}"])
    with pytest.raises(ConfigError, match=r"need 1 gpu_box .* placement.resources"):
        RLActors(cfg, total_steps=1, verifiers={"arithmetic": "math"})


@pytest.mark.slow
def test_roles_on_their_nodes_and_the_sync_reaches_the_other_node(sft_run, three_nodes, tmp_path):
    """Each role's actors run on its node; DeepSpeed's and the weight group's store were given the
    learner node's address; after an update and a collective sync from node 1 to node 2, vLLM's
    greedy output equals transformers' on the learner's weights. A sync that the engine never
    answers stops within sync.timeout_s, naming it."""
    from rlpost.rl.actors import RLActors
    from rlpost.tokenizer import load_tokenizer

    cfg = grpo_config(sft_run / "model", tmp_path, MULTINODE_ARGS)
    tokenizer = load_tokenizer(cfg.model_path)
    prompts = sync_check_prompts(tokenizer)
    actors = RLActors(cfg, total_steps=2, verifiers={"arithmetic": "math"})
    try:
        where = actors.placement()
        before = engine_greedy(actors, prompts, tokenizer)
        train_on_random_tokens(actors, prompts)
        actors.sync_weights()
        after = engine_greedy(actors, prompts, tokenizer)
        state = actors.learners.call("state_dict")[0]
        assert_a_busy_engine_times_the_sync_out(actors)
    finally:
        actors.shutdown()

    for role, node in three_nodes.items():
        assert set(where["nodes"][role]) == {node}, role
    # DeepSpeed's store and the weight broadcast's listen on the learner's node.
    assert where["rendezvous"]["learner"]["node"] == three_nodes["learner"]
    assert where["rendezvous"]["weight_sync"]["node"] == three_nodes["learner"]
    assert after == transformers_greedy(cfg.model_path, state, prompts, tokenizer)
    assert after != before


@pytest.mark.slow
def test_two_grpo_steps_across_three_nodes(sft_run, three_nodes, tmp_path):
    # The length reward gives groups a spread wherever their lengths differ.
    extra = [*MULTINODE_ARGS, "--rewards.functions", "[{name: length, weight: 1.0}]"]
    result = load_recipe("grpo").main(grpo_config(sft_run / "model", tmp_path, extra))
    assert result["steps"] == 2
    where = json.loads((tmp_path / "placement.json").read_text())
    assert {role: set(nodes) for role, nodes in where["nodes"].items()} == {r: {n} for r, n in three_nodes.items()}
    # A step whose groups all tie trains nothing; every step that trained recomputed vLLM's
    # logprobs on the learner's node (after a sync across nodes, for step 2).
    trained = [m for m in metrics(tmp_path) if "loss" in m]
    assert trained and all(m["logprob_gap"] < 0.05 for m in trained)
