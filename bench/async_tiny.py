"""Asynchronous GRPO on the tiny model: async.max_staleness 0, 1 and 2 from the same SFT model, each for
the same minutes of RL.

    .venv/bin/python bench/async_tiny.py [--minutes 10]      (after `make quickstart`)
    .venv/bin/python bench/async_tiny.py --steps 40 --staleness 0 1     accuracy at equal steps

For each staleness N the GRPO recipe (recipes/configs/grpo_tiny.yaml; loss.tis_cap 2 corrects the
stale samples when N >= 1) runs `--minutes` of RL, then every model answers the 1,000 held-out
arithmetic problems, greedily and sampled (T = 1, one sample each), with 95 % bootstrap intervals
over problems. Reported per N: steps per minute, the median seconds of each phase, staleness, the
learner/engine mismatch, and the held-out accuracies.

On this 2-core box the engines and the learner share the same cores, so overlapping them buys
little. Two more numbers say what it would buy elsewhere:
- measured overlap: (sum of the N = 0 run's median phase times − the median step at N) / the median
  step at N, the share of a step in which phases that ran one after another at N = 0 now ran at
  once (an estimate from medians, not a trace);
- projection (labelled as such): with the rollout engines and the learner on their own devices, a
  step at N >= 1 takes max(G, R + T + S + O) instead of G + R + T + S + O, where G is generation
  (time/rollout + time/tool), R scoring (time/reward + time/canaries), T training (time/train), S the
  weight sync and O the rest, all medians of the N = 0 run; steps per minute = 60 / that.
Writes bench/results/async_tiny.json, or with `--steps` (every run the same number of steps,
no time limit) bench/results/async_tiny_equal_steps.json.
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
STALENESS = (0, 1, 2)
PHASES = ("rollout", "tool", "reward", "canaries", "train", "sync", "wait_rollout", "step")


def run_grpo(staleness: int, minutes: float, steps: int) -> Path:
    run_dir = ROOT / f"runs/bench_async_{staleness}"
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends: a fresh run
    args = ["recipes/grpo.py", "--config", "recipes/configs/grpo_tiny.yaml", "--model_path", str(SFT_MODEL),
            "--run_dir", str(run_dir), "--train.max_minutes", str(minutes), "--train.steps", str(steps),
            "--train.eval_every", "0", "--logging.wandb_mode", "disabled", "--async.max_staleness", str(staleness),
            *(["--loss.tis_cap", "2.0"] if staleness else [])]  # fmt: skip
    print("$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
    return run_dir


def phase_medians(steps: list[dict]) -> dict:
    return {p: round(statistics.median(m.get(f"time/{p}", 0.0) or 0.0 for m in steps), 3) for p in PHASES}


def projection(phases: dict) -> dict:
    """Steps per minute of the N = 0 phase times run one after another, and with generation on
    devices of its own (module docstring)."""
    gen = phases["rollout"] + phases["tool"]
    score = phases["reward"] + phases["canaries"]
    rest = max(0.0, phases["step"] - gen - score - phases["train"] - phases["sync"])
    learner_side = score + phases["train"] + phases["sync"] + rest
    return {
        "formula": "step = max(G, R + T + S + O) with G, R, T, S, O the N = 0 run's median phase seconds",
        "sync_steps_per_min": round(60 / (gen + learner_side), 2),
        "async_own_devices_steps_per_min": round(60 / max(gen, learner_side), 2),
    }


def held_out_accuracy(models: dict[str, Path]) -> dict:
    from rlpost.compare.stats import mean_ci95
    from rlpost.distributed.cluster import init_ray
    from rlpost.evaluate import EvalConfig, evaluate_models
    from rlpost.tasks import EVAL_POOL, make_problems

    init_ray()
    problems = make_problems("arithmetic", "eval", EVAL_POOL)
    configs = {
        "greedy": EvalConfig(temperature=0.0, samples=1, max_new_tokens=128),
        "sampled": EvalConfig(temperature=1.0, samples=1, max_new_tokens=128),
    }
    results = evaluate_models({k: str(v) for k, v in models.items()}, problems, configs)
    out = {}
    for name, by_mode in results.items():
        for mode, result in by_mode.items():
            correct = [float(t["correct"]) for t in result.transcripts]  # one answer per problem
            out.setdefault(name, {})[mode] = mean_ci95(correct)
    return out


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.metrics import read_metrics, write_bench_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=0, help="run each N this many steps instead of --minutes")
    parser.add_argument("--staleness", type=int, nargs="+", default=list(STALENESS), help="the N to run (with 0)")
    args = parser.parse_args()
    if 0 not in args.staleness:
        parser.error("--staleness: include 0, the on-policy run the others are measured against")
    minutes, step_limit = (0.0, args.steps) if args.steps else (args.minutes, 100000)
    apply_cache_env()
    if not SFT_MODEL.exists():
        raise SystemExit(f"{SFT_MODEL} is missing: run `make quickstart` first")
    start, runs = time.time(), {}
    for n in args.staleness:
        steps = [m for m in read_metrics(run_grpo(n, minutes, step_limit)) if "time/step" in m]
        phases = phase_medians(steps)
        mismatch = [m["mismatch/kl"] for m in steps if "mismatch/kl" in m]
        runs[n] = {
            "steps": len(steps),
            "steps_per_min": round(len(steps) / (sum(m["time/step"] for m in steps) / 60), 2),
            "phase_median_s": phases,
            "staleness_max": max(m["staleness/max"] for m in steps),
            "mismatch_kl_median": statistics.median(mismatch) if mismatch else None,
            "logprob_gap_median": statistics.median(m["logprob_gap"] for m in steps if "logprob_gap" in m),
        }
    sequential = sum(runs[0]["phase_median_s"][p] for p in ("rollout", "tool", "reward", "canaries", "train", "sync"))
    for n in (n for n in args.staleness if n):
        step = runs[n]["phase_median_s"]["step"]
        runs[n]["overlap_share_estimate"] = round(max(0.0, sequential - step) / step, 3)
    accuracy = held_out_accuracy(
        {"sft": SFT_MODEL, **{f"staleness_{n}": ROOT / f"runs/bench_async_{n}/model" for n in args.staleness}}
    )
    metrics = {
        **({"steps_each": args.steps} if args.steps else {"minutes_each": args.minutes}),
        "runs": {str(n): r for n, r in runs.items()},
        "projection_own_devices": projection(runs[0]["phase_median_s"]),
        "held_out_accuracy": accuracy,
        "eval": "1000 held-out arithmetic problems, one greedy and one sampled (T = 1) answer each; 95 % bootstrap CI",
    }
    write_bench_result("async_tiny_equal_steps" if args.steps else "async_tiny", metrics, time.time() - start)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
