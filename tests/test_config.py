"""Config loading: YAML + dotted overrides, and errors that name the key before any work."""

import re
from dataclasses import dataclass

import pytest

from rlpost.config import ConfigError, doc, load_config, section
from rlpost.distributed.engine import VLLMConfig


@dataclass
class Inner:
    n: int = doc("count", 16)
    temperature: float = doc("t", 1.0)
    names: list[str] = doc("names", ["a"])


@dataclass
class Outer:
    run_dir: str = doc("dir", "runs/x")
    resume: bool = doc("resume", False)
    rollout: Inner = section(Inner)


def test_yaml_then_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: runs/y\nrollout:\n  n: 8\n")
    cfg = load_config(Outer, ["--config", str(path), "--rollout.temperature", "0.7", "--resume"])
    assert cfg.run_dir == "runs/y" and cfg.rollout.n == 8 and cfg.rollout.temperature == 0.7 and cfg.resume is True
    assert cfg.rollout.names == ["a"]  # untouched keys keep their defaults


def test_override_with_equals_and_list():
    cfg = load_config(Outer, ["--rollout.names=[x, y]", "--rollout.n=4"])
    assert cfg.rollout.names == ["x", "y"] and cfg.rollout.n == 4


def test_unknown_key_names_key_and_choices():
    with pytest.raises(ConfigError) as e:
        load_config(Outer, ["--rollout.temprature", "0.5"])
    assert "rollout.temprature" in str(e.value) and "temperature" in str(e.value)


def test_unknown_section_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rolout:\n  n: 8\n")
    with pytest.raises(ConfigError, match="rolout"):
        load_config(Outer, ["--config", str(path)])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"rollout\.n: expected an integer"):
        load_config(Outer, ["--rollout.n", "many"])
    with pytest.raises(ConfigError, match="resume: expected true/false"):
        load_config(Outer, ["--resume", "maybe"])


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Outer, ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Outer, ["--config", str(bad)])


def test_recipe_validation_names_key():
    from rlpost.trainer import OptimConfig

    @dataclass
    class C:
        optim: OptimConfig = section(OptimConfig)

    with pytest.raises(ConfigError, match=r"optim.schedule.*constant"):
        load_config(C, ["--optim.schedule", "linear"])


RECIPE_OF_CONFIG = {  # a config file's prefix → its recipe and the recipe's config class
    "pretrain": ("pretrain", "PretrainConfig"),
    "sft": ("sft", "SFTConfig"),
    "grpo": ("grpo", "GRPOConfig"),
    "reward_model": ("reward_model", "RewardModelConfig"),
    "ppo": ("ppo", "PPOConfig"),
    "rlhf": ("ppo", "PPOConfig"),
    "compare": ("compare", "CompareConfig"),
    "dpo": ("dpo", "DPOConfig"),
}


def test_every_shipped_config_loads_and_validates():
    """Every YAML under recipes/configs/ parses and validates against its recipe's dataclass
    (named by the file's prefix), and sets only keys the recipe has."""
    from helpers import ROOT

    from rlpost.config import load_recipe

    configs = sorted((ROOT / "recipes/configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        if path.stem.startswith("label_"):  # the ranking page (recipes/label.py); a person names themselves
            load_config(load_recipe("label").LabelConfig, ["--config", str(path), "--labeler", "alice"])
            continue
        prefix = next((r for r in RECIPE_OF_CONFIG if path.stem.startswith(r + "_")), None)
        assert prefix is not None, f"{path.name}: no recipe for this config"
        recipe, config_class = RECIPE_OF_CONFIG[prefix]
        cfg = load_config(getattr(load_recipe(recipe), config_class), ["--config", str(path)])
        assert cfg.run_dir == f"runs/{path.stem}", path.name
        if "_gpu_" in path.stem:
            check_gpu_preset(path.stem, cfg)


def check_gpu_preset(name: str, cfg) -> None:
    """A GPU preset (grpo_gpu_<N>node) asks for GPUs consistently: NCCL for the learner and the
    weight broadcast, one engine per tensor-parallel group, and exactly the N nodes' 8 GPUs each."""
    nodes = int(re.fullmatch(r".*_gpu_(\d+)node", name).group(1))
    v, p, ds = cfg.vllm, cfg.placement, cfg.deepspeed
    assert v.num_gpus > 0 and v.num_gpus == v.tensor_parallel_size, name
    assert p.learner_gpus > 0 and ds.dist_backend == "nccl" and cfg.sync.backend == "collective", name
    assert ds.world_size * p.learner_gpus + v.num_workers * v.num_gpus == 8 * nodes, name
    assert p.strategy == ("PACK" if nodes == 1 else "SPREAD"), name
    assert v.kv_cache_gib == 0 and not v.enforce_eager, name  # vLLM sizes the cache; CUDA graphs
    # One step's samples fill every engine's batch once.
    assert cfg.rollout.prompts_per_step * cfg.rollout.n == v.num_workers * v.max_num_seqs, name


def test_gpu_presets_exist():
    from helpers import ROOT

    names = {path.stem for path in (ROOT / "recipes/configs").glob("*_gpu_*.yaml")}
    assert {"grpo_gpu_1node", "grpo_gpu_2node"} <= names


@dataclass
class WithVLLM:
    vllm: VLLMConfig = section(VLLMConfig)


def test_vllm_gpu_knobs_validate():
    cfg = load_config(
        WithVLLM, ["--vllm.num_gpus", "2", "--vllm.tensor_parallel_size", "2", "--vllm.kv_cache_gib", "0"]
    )
    assert cfg.vllm.kv_cache_gib == 0 and cfg.vllm.gpu_memory_utilization == 0.9 and cfg.vllm.max_num_seqs == 256
    with pytest.raises(ConfigError, match=r"vllm\.tensor_parallel_size.*vllm\.num_gpus"):
        load_config(WithVLLM, ["--vllm.num_gpus", "2"])
    with pytest.raises(ConfigError, match=r"vllm\.tensor_parallel_size"):
        load_config(WithVLLM, ["--vllm.tensor_parallel_size", "2"])  # on CPU
    with pytest.raises(ConfigError, match=r"vllm\.kv_cache_gib"):
        load_config(WithVLLM, ["--vllm.kv_cache_gib", "0"])  # on CPU nothing else sizes the cache
    with pytest.raises(ConfigError, match=r"vllm\.gpu_memory_utilization"):
        load_config(WithVLLM, ["--vllm.num_gpus", "1", "--vllm.gpu_memory_utilization", "1.5"])
    with pytest.raises(ConfigError, match=r"vllm\.max_num_seqs"):
        load_config(WithVLLM, ["--vllm.max_num_seqs", "0"])
