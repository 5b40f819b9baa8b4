"""The ranking page's recipe (recipes/label.py): its config checks, and sampling the candidates
through a rollout worker (`rlpost/rlhf/candidates.py`). The page itself: test_label_page.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlpost.config import ConfigError, load_config, load_recipe
from rlpost.rlhf.candidates import candidates_path_for, sample_candidates
from rlpost.rlhf.label_server import LabelServer

LabelConfig = load_recipe("label").LabelConfig


def test_config_refuses_an_exposed_host_without_token(tmp_path):
    with pytest.raises(ConfigError, match="^token: "):
        load_config(LabelConfig, ["--labeler", "alice", "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="^token: "):
        LabelServer(tmp_path / "c.jsonl", tmp_path / "r.jsonl", "alice", host="0.0.0.0")
    cfg = load_config(LabelConfig, ["--labeler", "alice", "--host", "0.0.0.0", "--token", "s3cret"])
    assert (cfg.host, cfg.token, cfg.k) == ("0.0.0.0", "s3cret", 5)
    assert load_config(LabelConfig, ["--labeler", "a", "--host", "localhost"]).host == "localhost"
    assert load_config(LabelConfig, ["--labeler", "a", "--prompts", "data/p.jsonl"]).prompts == "data/p.jsonl"
    assert load_config(LabelConfig, ["--labeler", "a", "--prompts", "{arithmetic: 7}"]).prompts == {"arithmetic": 7}
    with pytest.raises(ConfigError, match="^labeler: "):
        load_config(LabelConfig, [])
    with pytest.raises(ConfigError, match="^k: "):
        load_config(LabelConfig, ["--labeler", "a", "--k", "1"])
    with pytest.raises(ConfigError, match="^prompts: unknown task 'nope'"):
        load_config(LabelConfig, ["--labeler", "a", "--prompts", "{nope: 3}"])
    assert candidates_path_for("runs/x/rankings.jsonl") == Path("runs/x/rankings.candidates.jsonl")


@pytest.mark.slow
def test_sample_candidates_through_a_rollout_worker(sft_run, ray_cluster, tmp_path):
    from rlpost.distributed.engine import VLLMConfig
    from rlpost.tasks import make_problems

    problems = make_problems("arithmetic", "rl", 3)
    path = tmp_path / "rankings.candidates.jsonl"
    records = sample_candidates(
        str(sft_run / "model"),
        [{"prompt": p.prompt, "answer": p.answer} for p in problems],
        3,
        path,
        max_new_tokens=64,
        vllm=VLLMConfig(kv_cache_gib=0.25),
    )
    assert [json.loads(line) for line in path.read_text().splitlines()] == records
    assert [(r["id"], r["prompt"], r["answer"]) for r in records] == [
        (i, p.prompt, p.answer) for i, p in enumerate(problems)
    ]
    assert all(len(r["responses"]) == 3 and all(t.strip() for t in r["responses"]) for r in records)
    # Sampled at temperature 1, three responses to the same prompt are not all one text.
    assert any(len(set(r["responses"])) > 1 for r in records)
    # A second call reads the file back: no model is needed (this path does not exist).
    assert sample_candidates(str(tmp_path / "no_model"), ["other prompt"], 5, path) == records
