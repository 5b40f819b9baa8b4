"""PPO (with a critic) vs GRPO vs equal-wall-time SFT on the tiny model, from the same SFT model.

    .venv/bin/python bench/ppo_tiny.py [--rerun-grpo]   (after `make quickstart` and bench/grpo_tiny.py)

1. PPO (recipes/configs/ppo_tiny.yaml: 10 minutes, the same 256 samples per step as GRPO, the
   critic started from the policy) from the SFT model.
2. GRPO's 10-minute run and its equal-wall-time SFT baseline come from bench/grpo_tiny.py's run
   folders (runs/bench_grpo, runs/bench_sft_equal_time), made from the same SFT model; they are
   re-run here when missing or with --rerun-grpo.
3. Every model on the same 1000 held-out arithmetic problems: sampled pass@1 (temperature 1, mean
   over 4 samples) and greedy accuracy, in one evaluation so they see identical prompts.
Writes bench/results/ppo_tiny.json: the accuracies, steps, and the median seconds of each phase
of a step (what the critic costs).
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
PPO_DIR, GRPO_DIR, SFT_MORE_DIR = ROOT / "runs/bench_ppo", ROOT / "runs/bench_grpo", ROOT / "runs/bench_sft_equal_time"
PHASES = ("rollout", "reward", "logprobs_values", "critic", "train", "sync", "step")


def run(args: list[str]) -> None:
    print("$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def phase_medians(run_dir: Path) -> tuple[int, float, dict]:
    from rlpost.metrics import read_metrics

    steps = [m for m in read_metrics(run_dir) if "time/step" in m]
    by_phase = {p: round(statistics.median(m.get(f"time/{p}", 0.0) or 0.0 for m in steps), 3) for p in PHASES}
    return len(steps), round(sum(m["time/step"] for m in steps) / 60, 2), by_phase


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.distributed.cluster import init_ray
    from rlpost.evaluate import EvalConfig, evaluate_models
    from rlpost.metrics import write_bench_result
    from rlpost.tasks import EVAL_POOL, make_problems

    apply_cache_env()
    if not SFT_MODEL.exists():
        raise SystemExit(f"{SFT_MODEL} is missing: run `make quickstart` first")
    start = time.time()
    if "--rerun-grpo" in sys.argv or not (GRPO_DIR / "model").exists() or not (SFT_MORE_DIR / "model").exists():
        run(["bench/grpo_tiny.py"])  # GRPO and its equal-time SFT baseline, with its own result file
    shutil.rmtree(PPO_DIR, ignore_errors=True)  # metrics.jsonl appends: start fresh
    run(["recipes/ppo.py", "--config", "recipes/configs/ppo_tiny.yaml", "--model_path", str(SFT_MODEL),
         "--run_dir", str(PPO_DIR)])  # fmt: skip

    init_ray()
    problems = make_problems("arithmetic", "eval", EVAL_POOL)
    configs = {
        "sampled": EvalConfig(temperature=1.0, samples=4, max_new_tokens=128),
        "greedy": EvalConfig(temperature=0.0, samples=1, max_new_tokens=128),
    }
    models = {
        "sft": SFT_MODEL,
        "ppo": PPO_DIR / "model",
        "grpo": GRPO_DIR / "model",
        "sft_equal_time": SFT_MORE_DIR / "model",
    }
    results = evaluate_models({k: str(v) for k, v in models.items()}, problems, configs)
    runs = {}
    for name, run_dir in (("ppo", PPO_DIR), ("grpo", GRPO_DIR)):
        steps, minutes, by_phase = phase_medians(run_dir)
        runs[name] = {"steps": steps, "rl_minutes": minutes, "step_time_s_by_phase": by_phase}
    metrics = {
        "accuracy": {
            name: {mode: r.accuracy["arithmetic"] for mode, r in res.items()} for name, res in results.items()
        },
        "runs": runs,
        "eval": f"{EVAL_POOL} held-out arithmetic problems; sampled = temperature 1, mean over 4 samples (pass@1)",
        "note": "GRPO and SFT-equal-time come from bench/grpo_tiny.py's runs of the same SFT model, made at "
        "another time on this shared box; compare steps per minute with that in mind",
    }
    write_bench_result("ppo_tiny", metrics, time.time() - start)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
