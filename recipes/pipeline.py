"""The whole tiny pipeline on CPU: tokenizer + pretrain → SFT → GRPO → the SFT and GRPO models compared.

    python recipes/pipeline.py            (what `make quickstart` runs)

Each stage runs as its own recipe process with its config from recipes/configs/, exactly as a
user would run it, into runs/. The wall time, the SFT model's held-out accuracy per task
(greedy, sampled, and at each SFT checkpoint) and held-out arithmetic accuracy before and after
a short GRPO run are written to bench/results/quickstart.json; the comparison of the SFT and
GRPO models (recipes/compare.py) ends in runs/compare_tiny/report.html.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from rlpost.evaluate import EvalResult, format_table
from rlpost.metrics import read_metrics, write_json

ROOT = Path(__file__).resolve().parent.parent
STAGES = [
    ("pretrain", ["recipes/pretrain.py", "--config", "recipes/configs/pretrain_tiny.yaml"]),
    ("sft", ["recipes/sft.py", "--config", "recipes/configs/sft_tiny.yaml"]),
    ("grpo", ["recipes/grpo.py", "--config", "recipes/configs/grpo_tiny.yaml", "--train.max_minutes", "4"]),
    ("compare", ["recipes/compare.py", "--config", "recipes/configs/compare_tiny.yaml"]),
]


def main() -> None:
    start = time.time()
    stage_s = {}
    for name, args in STAGES:
        print(f"\n=== {name}: python {' '.join(args)}", flush=True)
        t0 = time.time()
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
        stage_s[name] = round(time.time() - t0, 1)
    wall = round(time.time() - start, 1)
    report = json.loads((ROOT / "runs/sft_tiny/eval.json").read_text())
    greedy = EvalResult.from_json(report["greedy"])
    accuracy = {name: EvalResult.from_json(report[name]).accuracy for name in ("greedy_with_tool", "sampled")
                if name in report}  # fmt: skip
    rl = read_metrics(ROOT / "runs/grpo_tiny")
    rl_before = next(m for m in rl if m["step"] == 0 and "eval/arithmetic" in m)["eval/arithmetic"]
    rl_after = next(m for m in reversed(rl) if "final/eval/arithmetic" in m)["final/eval/arithmetic"]
    results = {
        "command": "make quickstart  (python recipes/pipeline.py)",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_s": wall,
        "metrics": {
            "sft_accuracy": greedy.accuracy,
            "sft_accuracy_with_tool": accuracy.get("greedy_with_tool", {}),
            "sft_sampled_pass@1": accuracy.get("sampled", {}),
            "sft_checkpoints_greedy": report["checkpoints"],
            "grpo_greedy_arithmetic": {"before": rl_before, "after": rl_after, "steps": max(m["step"] for m in rl)},
            "stage_wall_s": stage_s,
        },
    }
    write_json(ROOT / "bench/results/quickstart.json", results)
    print(f"\nheld-out greedy accuracy of the SFT model (whole pipeline {wall / 60:.1f} min):")
    print(format_table(greedy))
    print(f"held-out greedy arithmetic accuracy before GRPO {rl_before:.3f}, after GRPO {rl_after:.3f}")
    print(f"the SFT and GRPO models side by side: {ROOT / 'runs/compare_tiny/report.html'}")


if __name__ == "__main__":
    main()
