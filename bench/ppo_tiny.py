"""What PPO's critic costs: PPO and GRPO from the same SFT model, back to back in one run.

    .venv/bin/python bench/ppo_tiny.py [--minutes 10]        (after `make quickstart`)

1. PPO (recipes/configs/ppo_tiny.yaml: 256 samples a step, the critic started from the policy,
   the learner and the critic side by side on a core each) for `--minutes`.
2. GRPO (recipes/configs/grpo_tiny.yaml: 64 prompts × 4 = the same 256 samples a step) for as long.
   It trains only the groups whose rewards differ (`algo.drop_zero_variance_groups`).
3. GRPO trained on every sample of the same batch (`--algo.drop_zero_variance_groups false`),
   the like-for-like step: PPO trains every sample too.
4. The SFT model and every run's model on the same 1000 held-out arithmetic problems: sampled
   pass@1 (temperature 1, mean over 4 samples) and greedy accuracy, in one evaluation.
Writes bench/results/ppo_tiny.json: the accuracies, steps, the median seconds of each phase of a
step (the first step, which compiles and warms up, left out), and PPO's step over each GRPO's.
The equal-wall-time SFT baseline of the RL runs is bench/grpo_tiny.py's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SFT_MODEL = ROOT / "runs/sft_tiny/model"
RUNS = ROOT / "runs/bench_ppo"
PHASES = ("rollout", "reward", "logprobs_values", "critic", "train", "update", "sync", "step")
VARIANTS = {
    "ppo": ["recipes/ppo.py", "--config", "recipes/configs/ppo_tiny.yaml"],
    "grpo": ["recipes/grpo.py", "--config", "recipes/configs/grpo_tiny.yaml"],
    "grpo_every_sample": [
        "recipes/grpo.py",
        "--config",
        "recipes/configs/grpo_tiny.yaml",
        "--algo.drop_zero_variance_groups",
        "false",
    ],  # fmt: skip
}


def train(name: str, minutes: float) -> Path:
    run_dir = RUNS / name
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends: start fresh
    RUNS.mkdir(parents=True, exist_ok=True)
    args = [*VARIANTS[name], "--model_path", str(SFT_MODEL), "--run_dir", str(run_dir),
            "--train.max_minutes", str(minutes), "--train.eval_every", "0", "--logging.wandb_mode", "disabled"]  # fmt: skip
    print("$ python " + " ".join(args), flush=True)
    with open(f"{run_dir}.log", "w") as log:
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run_dir


def phase_medians(run_dir: Path) -> dict:
    from rlpost.metrics import read_metrics

    steps = [m for m in read_metrics(run_dir) if "time/step" in m]
    timed = steps[1:] or steps
    return {
        "steps": len(steps),
        "rl_minutes": round(sum(m["time/step"] for m in steps) / 60, 2),
        "samples_trained_mean": round(statistics.fmean(m["samples_trained"] for m in steps), 1),
        "step_time_s_by_phase": {
            p: round(statistics.median(m.get(f"time/{p}", 0.0) or 0.0 for m in timed), 3) for p in PHASES
        },
    }


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.distributed.cluster import init_ray
    from rlpost.evaluate import EvalConfig, evaluate_models
    from rlpost.metrics import write_bench_result
    from rlpost.tasks import EVAL_POOL, make_problems

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget of each RL run")
    args = parser.parse_args()
    apply_cache_env()
    if not SFT_MODEL.exists():
        raise SystemExit(f"{SFT_MODEL} is missing: run `make quickstart` first")
    start = time.time()
    run_dirs = {name: train(name, args.minutes) for name in VARIANTS}

    init_ray()
    problems = make_problems("arithmetic", "eval", EVAL_POOL)
    configs = {
        "sampled": EvalConfig(temperature=1.0, samples=4, max_new_tokens=128),
        "greedy": EvalConfig(temperature=0.0, samples=1, max_new_tokens=128),
    }
    models = {"sft": SFT_MODEL, **{name: d / "model" for name, d in run_dirs.items()}}
    results = evaluate_models({k: str(v) for k, v in models.items()}, problems, configs)
    runs = {name: phase_medians(d) for name, d in run_dirs.items()}
    ppo_step = runs["ppo"]["step_time_s_by_phase"]["step"]
    metrics = {
        "accuracy": {
            name: {mode: r.accuracy["arithmetic"] for mode, r in res.items()} for name, res in results.items()
        },
        "runs": runs,
        "ppo_step_over": {
            name: round(ppo_step / runs[name]["step_time_s_by_phase"]["step"], 2)
            for name in ("grpo", "grpo_every_sample")
        },
        "minutes_each": args.minutes,
        "eval": f"{EVAL_POOL} held-out arithmetic problems; sampled = temperature 1, mean over 4 samples (pass@1)",
    }
    write_bench_result("ppo_tiny", metrics, time.time() - start)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
