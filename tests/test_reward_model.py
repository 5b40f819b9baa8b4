"""Reward models from rankings: the recipe end to end, the saved folder, the card, and RL against
the learned reward through the real reward workers.

The rankings here are made by the SIMULATED labeler (`rlpost.rlhf.simulated_labeler`) from
hand-varied worked solutions, so the test knows the preference the model should learn."""

from __future__ import annotations

import json
import math

import pytest
from helpers import grpo_config, metrics, run_recipe, simulated_rankings

from rlpost.config import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rankings_file(tmp_path_factory):
    return simulated_rankings(tmp_path_factory.mktemp("rankings") / "simulated.jsonl", 300)


def rm_args(backbone, rankings, run_dir, *extra) -> list[str]:
    return [
        "--config",
        "recipes/configs/reward_model_tiny.yaml",
        "--model_path",
        str(backbone),
        "--run_dir",
        str(run_dir),
        "--data.files",
        f"[{rankings}]",
        "--data.held_out",
        "60",
        "--train.checkpoint_every",
        "20",
        "--bootstrap_resamples",
        "200",
        "--logging.wandb_mode",
        "disabled",
        # The bottom 3 of the backbone's 4 layers, the top 2 of them trained: the options that make
        # a large backbone affordable on a CPU, through the same saved folder and scoring rule.
        "--train.backbone_layers",
        "3",
        "--train.trainable_layers",
        "2",
        *extra,
    ]


@pytest.fixture(scope="module")
def reward_run(pretrained, rankings_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reward_model")
    proc = run_recipe("reward_model.py", rm_args(pretrained / "model", rankings_file, run_dir, "--train.epochs", "2"))
    return run_dir, proc


@pytest.fixture(scope="module")
def synthetic_run(pretrained, rankings_file, tmp_path_factory):
    """A second reward model, as an ensemble's member: another seed on the same split (split seed 0),
    with synthetic negatives in its rankings."""
    run_dir = tmp_path_factory.mktemp("reward_model_synthetic")
    extra = ["--train.epochs", "1", "--seed", "1", "--data.split_seed", "0", "--data.synthetic_negatives", "true"]
    run_recipe("reward_model.py", rm_args(pretrained / "model", rankings_file, run_dir, *extra))
    return run_dir


def test_synthetic_negatives_are_the_worst_tier_and_the_card_says_so(synthetic_run):
    from rlpost.rlhf.rankings import Ranking

    reward_model = load_recipe("reward_model")
    ranking = Ranking("What is 2 + 3?", ("2 + 3 = 5. The answer is 5.", "The answer is 6."), (0, 1))
    extended = reward_model.with_synthetic_negatives(ranking)
    # The two answers keep their tiers; below them, tied: the answers' most frequent word ("5.",
    # first of the words seen twice) repeated 8 times, the empty answer, the echo, the best half cut.
    assert extended.responses[2:] == (" ".join(["5."] * 8), "", "What is 2 + 3?", "2 + 3 =")
    assert extended.ranks == (0, 1, 2, 2, 2, 2)
    card = json.loads((synthetic_run / "model" / "reward_card.json").read_text())
    assert card["trained"]["synthetic_negatives"] == ["repeat", "empty", "echo", "truncated"]
    assert card["normalization"]["samples"] <= 4 * 240  # over the labelled answers only


def test_an_ensemble_member_of_another_seed_trains_on_the_split_seed_s_prompts(synthetic_run, rankings_file):
    # Normalised over its labelled training answers: those of split seed 0, not of its own seed 1.
    norm = json.loads((synthetic_run / "model" / "reward_card.json").read_text())["normalization"]
    for split_seed, same in ((0, True), (1, False)):
        _, scores = training_scores(synthetic_run, rankings_file, split_seed)
        assert (norm["mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-4)) is same, split_seed


def test_the_recipe_learns_the_preference_and_reports_baselines(reward_run):
    run_dir, proc = reward_run
    log = metrics(run_dir)
    losses = [m["loss"] for m in log if "loss" in m]
    assert len(losses) == 2 * (240 // 16)  # 240 training prompts, 16 rankings a step, 2 epochs
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    held_out = json.loads((run_dir / "eval.json").read_text())
    assert held_out["prompts"] == 60
    for key in ("pair_accuracy", "best_worst_accuracy", "kendall_tau", "log_loss", "longer_wins_pair_accuracy"):
        lo, hi = held_out[key]["ci95"]
        assert lo <= held_out[key]["mean"] <= hi, key
    assert held_out["pair_accuracy"]["mean"] > 0.55  # the preference is partly visible in the last tokens
    assert "pair_accuracy" in proc.stdout


def test_saved_folder_loads_with_transformers_and_scores_like_the_recipe(reward_run, rankings_file):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlpost.rlhf.rankings import read_rankings
    from rlpost.rlhf.reward_model import RewardScorer, render

    folder = reward_run[0] / "model"
    rankings = read_rankings(rankings_file)[:6]
    prompts = [r.prompt for r in rankings for _ in r.responses]
    responses = [resp for r in rankings for resp in r.responses]
    ours = RewardScorer(folder, batch_size=5).score(prompts, responses)

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    sequences = [render(tokenizer, p, r, 256) for p, r in zip(prompts, responses)]
    width = max(map(len, sequences))
    pad = model.config.pad_token_id
    batch = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])  # right padding, as the recipe
    with torch.no_grad():
        theirs = model(input_ids=batch).logits.squeeze(-1).tolist()
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert len(set(round(s, 4) for s in ours)) > 1


def training_scores(run_dir, rankings_file, split_seed: int):
    """The reward model's scorer and its raw scores of every response of the training prompts
    of the split made with `split_seed` (60 prompts held out)."""
    from rlpost.rlhf.rankings import read_rankings, split_by_prompt
    from rlpost.rlhf.reward_model import RewardScorer

    train, _ = split_by_prompt(read_rankings(rankings_file), 60, seed=split_seed)
    responses = [(r.prompt, text) for r in train for text in r.responses]
    scorer = RewardScorer(run_dir / "model", batch_size=64)
    return scorer, scorer.score([p for p, _ in responses], [t for _, t in responses])


def test_reward_card_describes_the_model(reward_run, rankings_file):
    from rlpost.rlhf.reward_model import read_card
    from rlpost.rlhf.simulated_labeler import LABELER

    run_dir, _ = reward_run
    card = read_card(run_dir / "model")
    assert "last token" in card["score_rule"] and card["max_tokens"] == 256
    assert card["trained"]["labelers"] == [LABELER]
    assert card["trained"]["simulated_labelers"] is True
    assert card["trained"]["prompts"] == 240 and card["held_out"]["prompts"] == 60
    assert card["trained"]["backbone_layers"] == 3 and card["trained"]["trainable_layers"] == 2
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and len(config["id2label"]) == 1
    # Normalisation statistics: those of the training responses (all 960 fit in the sample).
    scorer, scores = training_scores(run_dir, rankings_file, split_seed=0)
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    norm = card["normalization"]
    assert norm["samples"] == len(scores) == 960
    assert norm["mean"] == pytest.approx(mean, abs=1e-4) and norm["std"] == pytest.approx(std, abs=1e-4)
    normalized = scorer.normalized(scores)
    assert sum(normalized) / len(normalized) == pytest.approx(0.0, abs=1e-4)


def test_resume_continues_from_the_last_checkpoint(reward_run, pretrained, rankings_file, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reward_run[0], run_dir)  # a finished 2-epoch run (30 steps), resumed for a third epoch
    proc = run_recipe(
        "reward_model.py", rm_args(pretrained / "model", rankings_file, run_dir, "--train.epochs", "3", "--resume")
    )
    assert "resumed from step 30" in proc.stdout
    steps = [m["step"] for m in metrics(run_dir) if "loss" in m]
    assert steps == list(range(1, 46))


def test_a_bad_rankings_line_stops_before_training(pretrained, tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "p", "responses": ["a", "b"], "order": [0, 1]})
        + "\n"
        + json.dumps({"prompt": "q", "responses": ["a", "b"], "order": [0, 2]})
        + "\n"
    )
    args = rm_args(pretrained / "model", bad, tmp_path / "run", "--data.held_out", "1")
    proc = subprocess.run(
        [sys.executable, "recipes/reward_model.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert f"{bad}:2" in proc.stderr and "out of range" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_grpo_two_steps_with_an_ensemble_of_learned_rewards(reward_run, synthetic_run, sft_run, ray_cluster, tmp_path):
    """The two reward models score together in the reward workers: mean − 0.5·std, each logged."""
    grpo = load_recipe("grpo")
    paths = f"['{reward_run[0] / 'model'}', '{synthetic_run / 'model'}']"
    rewards = f"[{{name: reward_model, timeout_s: 60, kwargs: {{paths: {paths}, penalty: 0.5, batch_size: 8}}}}]"
    cfg = grpo_config(
        sft_run / "model",
        tmp_path,
        [
            "--train.eval_every",
            "0",
            "--train.checkpoint_every",
            "0",
            "--eval.problems_per_task",
            "4",
            "--rewards.functions",
            rewards,
            "--optim.lr",
            "1e-4",
        ],
    )
    result = grpo.main(cfg)
    assert result["steps"] == 2
    steps = [m for m in metrics(tmp_path) if "loss" in m]
    assert len(steps) == 2
    for m in steps:
        # A learned score for every sample: a continuous spread, no failures, so every group has a signal.
        assert math.isfinite(m["reward/reward_model"]) and m["reward/std"] > 0
        assert m["reward/reward_model/failures"] == 0
        assert m["samples_trained"] == 16
        members, std = (
            (m["reward/reward_model/member_0"], m["reward/reward_model/member_1"]),
            m["reward/reward_model/std"],
        )
        assert std > 0 and members[0] != members[1]
        # A batch mean of mean − λ·std per sample is the mean of the members' means minus λ·(mean std).
        assert m["reward/reward_model"] == pytest.approx(sum(members) / 2 - 0.5 * std, abs=1e-4)


def test_rlhf_two_ppo_steps_with_the_critic_from_the_reward_model(reward_run, sft_run, ray_cluster, tmp_path):
    """RLHF: PPO against the learned reward, its critic started from the same reward model."""
    rm = reward_run[0] / "model"
    rewards = f"[{{name: reward_model, timeout_s: 60, kwargs: {{path: '{rm}', batch_size: 8}}}}]"
    extra = ["--train.eval_every", "0", "--train.checkpoint_every", "0", "--eval.problems_per_task", "4",
             "--rewards.functions", rewards, "--critic.init", "reward_model", "--critic.path", str(rm),
             "--algo.score_clip", "3"]  # fmt: skip
    result = load_recipe("ppo").main(grpo_config(sft_run / "model", tmp_path, extra, recipe="ppo"))
    assert result["steps"] == 2
    steps = [m for m in metrics(tmp_path) if "loss" in m]
    assert len(steps) == 2
    for m in steps:
        assert m["samples_trained"] == 16 and m["reward/reward_model/failures"] == 0
        # The score is the normalised learned reward, clipped to ±3.
        assert abs(m["objective/scores"]) <= 3 and math.isfinite(m["reward/reward_model"])
        assert all(math.isfinite(m[k]) for k in ("critic/value_loss", "critic/explained_variance", "loss"))
    # A critic started from the reward model has its head: its first values are not all zero.
    assert steps[0]["critic/values_mean"] != 0.0
