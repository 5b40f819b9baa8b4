"""Thinking vs SFT on the tiny model: five models side by side on 1,000 held-out arithmetic problems.

    .venv/bin/python bench/compare_tiny.py     (after `make quickstart` has written runs/pretrain_tiny/model)

The models, all from the same base model (runs/pretrain_tiny/model) and the same 400 worked
arithmetic solutions (plus the other tasks' SFT data), each trained here for the same 900 SFT
steps and, for the RL models, the same 69 GRPO steps (what bench/grpo_tiny.py's 10 minutes gave
on an AVX2-only CPU; bounded by steps, not minutes, so a loaded box cannot shorten a run):
  sft            worked solutions: the steps, then "The answer is X."
  answer_first   the same solutions with the answer first and the steps after it
  grpo           GRPO from `sft` with recipes/configs/grpo_tiny.yaml (the math reward)
  think_sft      the steps inside <think>…</think>, then a one-line answer
  think_grpo     GRPO from `think_sft` with the math reward and the format reward (a closed think
                 block and the answer phrase, weight 0.2)
Then recipes/compare.py on 1,000 held-out problems, 16 samples each (temperature 1), budget
forcing at 8 … 128 tokens. Models and answers already in runs/bench_compare/ are reused. Writes
bench/results/compare_tiny.json and the report in runs/bench_compare/report/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "runs/pretrain_tiny/model"
RUN = ROOT / "runs/bench_compare"
SFT_STEPS, GRPO_STEPS = 900, 69


def run(args: list[str]) -> None:
    print("$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def sft(name: str, solution_format: str) -> Path:
    run_dir = RUN / name
    if not (run_dir / "model").exists():
        run(["recipes/sft.py", "--config", "recipes/configs/sft_tiny.yaml", "--model_path", str(BASE),
             "--run_dir", str(run_dir), "--data.solution_format", solution_format, "--train.steps", str(SFT_STEPS),
             "--train.checkpoint_every", str(SFT_STEPS), "--sampled_eval_tasks", "[]"])  # fmt: skip
    return run_dir / "model"


def grpo(name: str, model: Path, extra: list[str]) -> Path:
    run_dir = RUN / name
    if not (run_dir / "model").exists():
        run(["recipes/grpo.py", "--config", "recipes/configs/grpo_tiny.yaml", "--model_path", str(model),
             "--run_dir", str(run_dir), "--train.steps", str(GRPO_STEPS), "--train.max_minutes", "0", *extra])  # fmt: skip
    return run_dir / "model"


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.metrics import write_bench_result

    apply_cache_env()
    if not BASE.exists():
        raise SystemExit(f"{BASE} is missing: run `make quickstart` first")
    start = time.time()
    models = {"sft": sft("sft", "worked"), "answer_first": sft("answer_first", "answer_first")}
    models["grpo"] = grpo("grpo", models["sft"], [])
    models["think_sft"] = sft("think_sft", "think")
    rewards = "[{name: math}, {name: format, weight: 0.2, kwargs: {require_think: true}}]"
    models["think_grpo"] = grpo("think_grpo", models["think_sft"], ["--rewards.functions", rewards])
    spec = "{" + ", ".join(f"{name}: '{path}'" for name, path in models.items()) + "}"
    run(["recipes/compare.py", "--config", "recipes/configs/compare_tiny.yaml", "--run_dir", str(RUN / "report"),
         "--models", spec, "--data.tasks", "{arithmetic: 1000}", "--sampling.samples", "16",
         "--sampling.budgets", "[8, 16, 32, 64, 128]"])  # fmt: skip
    results = json.loads((RUN / "report" / "results.json").read_text())
    keep = ("greedy_accuracy", "pass@1", "pass@k", "maj@k", "mean_tokens", "truncated_frac",
            "reflection_per_1k_tokens", "budget_accuracy", "thinking_chars_mean", "answer_chars_mean")  # fmt: skip
    metrics = {
        "models": {name: str(path.relative_to(ROOT)) for name, path in models.items()},
        "per_model": {
            m: {k: v for k, v in r["arithmetic"].items() if k in keep} for m, r in results["per_model"].items()
        },
        "pairs": results["pairs"],
        "eval": "1000 held-out arithmetic problems; 1 greedy + 16 sampled answers (temperature 1) each",
        "report": str((RUN / "report" / "report.html").relative_to(ROOT)),
    }
    write_bench_result("compare_tiny", metrics, time.time() - start)
    print(json.dumps(metrics["per_model"], indent=1))


if __name__ == "__main__":
    main()
