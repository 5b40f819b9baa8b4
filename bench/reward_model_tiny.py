"""Reward models from K-way rankings vs one pair per prompt, on the tiny SFT model's own answers.

    .venv/bin/python bench/reward_model_tiny.py      (after `make quickstart` has written runs/sft_tiny/model)

1. The tiny SFT model answers 1,200 arithmetic practice problems 5 times each (temperature 1,
   through a vLLM rollout worker: `rlpost.rlhf.candidates.sample_candidates`).
2. The SIMULATED labeler (`rlpost.rlhf.simulated_labeler`, recorded as "simulated:arithmetic_grader")
   orders each prompt's 5 answers by a hidden preference: correct first; then sound text; then
   work shown, with fewer bad steps; a stated unit and brevity break ties. The reward models see
   only the rankings.
3. 200 prompts are held out; reward models are trained on the first 100 / 300 / 1,000 of the
   other prompts with (a) all pairs of each ranking, (b) Plackett–Luce, (c) only the best-vs-worst
   pair of each ranking — all for the same number of optimizer steps.
4. Each is scored on the same held-out prompts against the hidden preference (all-pairs and
   best-vs-worst accuracy, Kendall τ, 95 % bootstrap intervals over prompts), beside the
   "longer wins" and "shorter wins" baselines.
Writes bench/results/reward_model_tiny.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SFT_MODEL = ROOT / "runs/sft_tiny/model"
RUN = ROOT / "runs/bench_reward_model_tiny"
PROMPTS, HELD_OUT, K = 1200, 200, 5
SIZES = (100, 300, 1000)
LOSSES = ("all_pairs", "plackett_luce", "best_worst")
STEPS, BATCH = 100, 16  # the same number of updates for every reward model


def train_reward_models(rankings: Path) -> dict:
    """One reward model per loss and training-set size on the same rankings; their held-out metrics."""
    from rlpost.config import load_config, load_recipe

    recipe = load_recipe("reward_model")
    runs = {}
    for loss in LOSSES:
        for n in SIZES:
            name = f"{loss}/{n}"
            cfg = load_config(
                recipe.RewardModelConfig,
                [
                    "--config",
                    "recipes/configs/reward_model_tiny.yaml",
                    "--model_path",
                    str(SFT_MODEL),
                    "--run_dir",
                    str(RUN / loss / str(n)),
                    "--data.files",
                    f"[{rankings}]",
                    "--data.held_out",
                    str(HELD_OUT),
                    "--data.max_train_prompts",
                    str(n),
                    "--loss.type",
                    loss,
                    "--train.batch_size",
                    str(BATCH),
                    "--train.epochs",
                    str(STEPS * BATCH / n),
                    "--train.checkpoint_every",
                    str(STEPS),
                    "--logging.wandb_mode",
                    "disabled",
                ],
            )
            t0 = time.time()
            card = recipe.main(cfg)
            runs[name] = {"train_s": round(time.time() - t0, 1), **card["held_out"]}
            print(f"{name}: held-out pair accuracy {card['held_out']['pair_accuracy']}", flush=True)

    return runs


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.metrics import write_bench_result
    from rlpost.rlhf.candidates import load_prompts, sample_candidates
    from rlpost.rlhf.simulated_labeler import LABELER, label, preference_key

    apply_cache_env()
    t_start = time.time()
    RUN.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    candidates = sample_candidates(
        str(SFT_MODEL), load_prompts({"arithmetic": PROMPTS}), K, RUN / "candidates.jsonl", max_new_tokens=128
    )
    sample_s = time.time() - t0
    rankings = RUN / "rankings.jsonl"
    keys = []
    with open(rankings, "w") as f:
        for c in candidates:
            f.write(json.dumps(label(c["prompt"], c["responses"], c["answer"])) + "\n")
            keys += [preference_key(c["prompt"], r, c["answer"]) for r in c["responses"]]
    print(f"{len(candidates)} prompts x {K} answers sampled in {sample_s:.0f} s and ranked by {LABELER}")

    runs = train_reward_models(rankings)
    first = runs[f"{LOSSES[0]}/{SIZES[0]}"]
    metrics = {
        "labeler": LABELER + " (a scripted preference, not a person)",
        "hidden_preference": "correct answer; then sound text; then shown work with fewer bad steps; a unit and brevity break ties",
        "prompts_sampled": len(candidates),
        "responses_per_prompt": K,
        "held_out_prompts": HELD_OUT,
        "steps_per_model": STEPS,
        "rankings_per_step": BATCH,
        "sampled_answers_correct_frac": statistics.fmean(k[0] == 0 for k in keys),
        "sample_s": round(sample_s, 1),
        "baselines": {
            "longer_wins_pair_accuracy": first["longer_wins_pair_accuracy"],
            "shorter_wins_pair_accuracy": first["shorter_wins_pair_accuracy"],
        },
        "held_out": {
            name: {k: r[k] for k in ("pair_accuracy", "best_worst_accuracy", "kendall_tau", "log_loss", "train_s")}
            for name, r in runs.items()
        },
    }
    write_bench_result("reward_model_tiny", metrics, time.time() - t_start)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
