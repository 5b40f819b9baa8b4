"""GRPO vs equal-wall-time SFT on the tiny model: does RL beat more of the same SFT?

    .venv/bin/python bench/grpo_tiny.py          (after `make quickstart` has written runs/sft_tiny/model)

1. GRPO (recipes/configs/grpo_tiny.yaml: 10 minutes of RL on answer-only arithmetic problems)
   from the SFT model.
2. The fair baseline: continued SFT from the same SFT model on the same worked solutions, with
   the SFT recipe's own schedule, for the same wall time as the RL loop took.
3. All three models (before, after GRPO, SFT equal time) on the same 1000 held-out arithmetic
   problems (the whole held-out pool): sampled pass@1 (temperature 1, mean over 4 samples) and
   greedy accuracy.
Writes bench/results/grpo_tiny.json.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SFT_MODEL = ROOT / "runs/sft_tiny/model"
GRPO_DIR, SFT_MORE_DIR = ROOT / "runs/bench_grpo", ROOT / "runs/bench_sft_equal_time"


def run(args: list[str]) -> float:
    t0 = time.time()
    print("$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
    return time.time() - t0


def held_out_accuracy() -> dict:
    """Sampled and greedy accuracy of the three models on every held-out arithmetic problem."""
    from rlpost.distributed.cluster import init_ray
    from rlpost.evaluate import EvalConfig, evaluate_models
    from rlpost.tasks import EVAL_POOL, make_problems

    init_ray()
    # All of the held-out pool: on 500 problems × 4 samples a sampled pass@1 near 30 % has a
    # standard error of about a point, as large as the differences between the variants compared.
    problems = make_problems("arithmetic", "eval", EVAL_POOL)
    configs = {
        "sampled": EvalConfig(temperature=1.0, samples=4, max_new_tokens=128),
        "greedy": EvalConfig(temperature=0.0, samples=1, max_new_tokens=128),
    }
    models = {"before": SFT_MODEL, "grpo": GRPO_DIR / "model", "sft_equal_time": SFT_MORE_DIR / "model"}
    results = evaluate_models({k: str(v) for k, v in models.items()}, problems, configs)
    return {name: {mode: r.accuracy["arithmetic"] for mode, r in res.items()} for name, res in results.items()}


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.metrics import read_metrics, write_bench_result
    from rlpost.tasks import EVAL_POOL

    apply_cache_env()
    if not SFT_MODEL.exists():
        raise SystemExit(f"{SFT_MODEL} is missing: run `make quickstart` first")
    for run_dir in (GRPO_DIR, SFT_MORE_DIR):  # fresh runs: metrics.jsonl appends, and step counts are read from it
        shutil.rmtree(run_dir, ignore_errors=True)
    start = time.time()
    run(
        [
            "recipes/grpo.py",
            "--config",
            "recipes/configs/grpo_tiny.yaml",
            "--model_path",
            str(SFT_MODEL),
            "--run_dir",
            str(GRPO_DIR),
        ]
    )
    steps = [m for m in read_metrics(GRPO_DIR) if "time/step" in m]
    rl_minutes = sum(m["time/step"] for m in steps) / 60
    # The baseline runs the SFT recipe as configured (its warm-up and lr schedule) for as many steps
    # as the SFT run's pace fits into the RL wall time, capped at that time.
    sft_times = [m["time"] for m in read_metrics(SFT_MODEL.parent)]
    sft_step_s = statistics.median(b - a for a, b in zip(sft_times, sft_times[1:]))
    sft_steps = int(rl_minutes * 60 / sft_step_s)
    run(
        [
            "recipes/sft.py",
            "--config",
            "recipes/configs/sft_tiny.yaml",
            "--model_path",
            str(SFT_MODEL),
            "--run_dir",
            str(SFT_MORE_DIR),
            "--train.steps",
            str(sft_steps),
            "--train.max_minutes",
            f"{rl_minutes:.2f}",
            "--train.checkpoint_every",
            str(sft_steps),
            "--sampled_eval_tasks",
            "[]",
            "--checkpoint_eval.problems_per_task",
            "20",
            "--final_eval.problems_per_task",
            "20",
        ]
    )

    acc = held_out_accuracy()
    phases = ("rollout", "reward", "reference", "train", "sync", "eval", "checkpoint", "step")
    by_phase = {p: round(statistics.median(m.get(f"time/{p}", 0.0) or 0.0 for m in steps), 3) for p in phases}
    metrics = {
        "accuracy_before": acc["before"]["sampled"],
        "accuracy_after": acc["grpo"]["sampled"],
        "accuracy_sft_equal_time": acc["sft_equal_time"]["sampled"],
        "greedy_before": acc["before"]["greedy"],
        "greedy_after": acc["grpo"]["greedy"],
        "greedy_sft_equal_time": acc["sft_equal_time"]["greedy"],
        "steps": len(steps),
        "rl_minutes": round(rl_minutes, 2),
        "sft_equal_time_steps": max(m["step"] for m in read_metrics(SFT_MORE_DIR)),
        "step_time_s_by_phase": by_phase,
        "eval": f"{EVAL_POOL} held-out arithmetic problems; sampled = temperature 1, mean over 4 samples (pass@1)",
    }
    write_bench_result("grpo_tiny", metrics, time.time() - start)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
