"""Config loading: YAML + dotted overrides, and errors that name the key before any work."""

from dataclasses import dataclass

import pytest

from rlpost.config import ConfigError, doc, load_config, section


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
}


def test_every_shipped_config_loads_and_validates():
    """Every YAML under recipes/configs/ parses and validates against its recipe's dataclass
    (named by the file's prefix), and sets only keys the recipe has."""
    from conftest import ROOT, load_recipe

    from rlpost.label import LabelConfig

    configs = sorted((ROOT / "recipes/configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        if path.stem.startswith("label_"):  # the ranking page (python -m rlpost.label); a person names themselves
            load_config(LabelConfig, ["--config", str(path), "--labeler", "alice"])
            continue
        prefix = next((r for r in RECIPE_OF_CONFIG if path.stem.startswith(r + "_")), None)
        assert prefix is not None, f"{path.name}: no recipe for this config"
        recipe, config_class = RECIPE_OF_CONFIG[prefix]
        cfg = load_config(getattr(load_recipe(recipe), config_class), ["--config", str(path)])
        assert cfg.run_dir == f"runs/{path.stem}", path.name
