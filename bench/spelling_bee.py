"""The spelling bee with and without the Python tool, before and after GRPO with the tool.

    .venv/bin/python bench/spelling_bee.py       (after `make quickstart` has written runs/sft_tiny/model)

The tiny SFT model was trained on spelling-bee solutions that spell the word out, count with a
running counter and then check with `'word'.count('l')` (recipes/sft.py, data.tool_calls).
1. The SFT model on 500 held-out spelling-bee problems, greedy and sampled (T=1, 4 per problem):
   without the tool (its Python calls are not run: it has to guess their output) and with it.
2. GRPO with the tool (recipes/configs/grpo_spelling_bee.yaml) from the SFT model.
3. The GRPO model on the same problems, with the tool.
Writes bench/results/spelling_bee.json.
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
GRPO_DIR = ROOT / "runs/bench_spelling_bee"


def main() -> None:
    import ray

    from rlpost.cache import apply_cache_env
    from rlpost.distributed.cluster import init_ray
    from rlpost.distributed.engine import VLLMConfig, start_rollout_workers
    from rlpost.distributed.tools import ToolConfig
    from rlpost.evaluate import EvalConfig, evaluate
    from rlpost.metrics import read_metrics, write_bench_result
    from rlpost.tasks import make_problems
    from rlpost.tokenizer import load_tokenizer

    apply_cache_env()
    if not SFT_MODEL.exists():
        raise SystemExit(f"{SFT_MODEL} is missing: run `make quickstart` first")
    shutil.rmtree(GRPO_DIR, ignore_errors=True)  # a fresh run: metrics.jsonl appends, and steps are read from it
    start = time.time()
    command = [
        "recipes/grpo.py",
        "--config",
        "recipes/configs/grpo_spelling_bee.yaml",
        "--model_path",
        str(SFT_MODEL),
        "--run_dir",
        str(GRPO_DIR),
    ]
    print("$ python " + " ".join(command), flush=True)
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True)
    steps = [m for m in read_metrics(GRPO_DIR) if "time/step" in m]

    init_ray()
    problems = make_problems("spelling_bee", "eval", 500)
    modes = {
        "greedy": EvalConfig(temperature=0.0, max_new_tokens=160),
        "sampled": EvalConfig(temperature=1.0, samples=4, max_new_tokens=160),
    }
    tool = ToolConfig(enabled=True, max_calls=1)
    accuracy = {}
    for name, path, tool_modes in (
        ("sft", SFT_MODEL, {"no_tool": None, "tool": tool}),
        ("grpo", GRPO_DIR / "model", {"tool": tool}),
    ):
        worker = start_rollout_workers(str(path), VLLMConfig())[0]
        tokenizer = load_tokenizer(path)
        for tool_name, tools in tool_modes.items():
            for mode, cfg in modes.items():
                r = evaluate(worker, tokenizer, problems, cfg, tools=tools).per_task["spelling_bee"]
                accuracy[f"{name}_{tool_name}_{mode}"] = r["accuracy"]
                accuracy[f"{name}_{tool_name}_{mode}_tool_calls"] = r["tool_calls"]
                print(
                    f"{name} {tool_name} {mode}: accuracy {r['accuracy']:.3f}, tool calls {r['tool_calls']:.2f}",
                    flush=True,
                )
        ray.kill(worker)

    phases = ("rollout", "tool", "reward", "train", "sync", "step")
    metrics = {
        **accuracy,
        "grpo_steps": len(steps),
        "grpo_minutes": round(sum(m["time/step"] for m in steps) / 60, 2),
        "step_time_s_by_phase": {
            p: round(statistics.median(m.get(f"time/{p}", 0.0) for m in steps), 3) for p in phases
        },
        "eval": "500 held-out spelling-bee problems; sampled = temperature 1, mean over 4 samples (pass@1)",
    }
    write_bench_result("spelling_bee", metrics, time.time() - start)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
