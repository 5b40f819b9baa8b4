"""Helpers the tests share: paths, recipe runs, configs, and the engine-vs-transformers checks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rlpost.config import load_recipe

ROOT = Path(__file__).resolve().parent.parent


SHARED_DATA = ROOT.parent / "shared" / "data"


# Small enough for CI, large enough for the loss to fall visibly.
PRETRAIN_ARGS = [
    "--config",
    "recipes/configs/pretrain_tiny.yaml",
    "--data.synthetic_docs",
    "3000",
    "--data.seq_len",
    "128",
    "--train.steps",
    "30",
    "--train.batch_size",
    "16",
    "--train.checkpoint_every",
    "10",
    "--tokenizer.train_docs",
    "3000",
    "--logging.wandb_mode",
    "disabled",
]


def run_recipe(script: str, args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a recipe as a user would; fail the test with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, f"recipes/{script}", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


# Two tiny GRPO steps; the length reward gives every group some spread, so updates are never empty.
GRPO_TINY_ARGS = [
    "--train.steps",
    "2",
    "--train.eval_every",
    "2",
    "--train.checkpoint_every",
    "1",
    "--eval.problems_per_task",
    "8",
    "--rollout.prompts_per_step",
    "4",
    "--rollout.n",
    "4",
    "--rollout.max_new_tokens",
    "32",
    "--rewards.functions",
    "[{name: math}, {name: length, weight: 0.5}]",
    "--vllm.kv_cache_gib",
    "0.25",
    "--logging.wandb_mode",
    "disabled",
    "--optim.lr",
    "1e-3",
]


def grpo_config(model_path, run_dir, extra=(), recipe="grpo"):
    """The GRPO recipe's config for a tiny run (recipes/configs/grpo_tiny.yaml, then
    GRPO_TINY_ARGS, then `extra`, which overrides both); with recipe="ppo", PPO's config
    (recipes/configs/ppo_tiny.yaml, the same arguments)."""
    from rlpost.config import load_config

    return load_config(
        getattr(load_recipe(recipe), f"{recipe.upper()}Config"),
        [
            "--config",
            f"recipes/configs/{recipe}_tiny.yaml",
            "--model_path",
            str(model_path),
            "--run_dir",
            str(run_dir),
            *GRPO_TINY_ARGS,
            *extra,
        ],
    )


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def sync_check_prompts(tokenizer, count: int = 4) -> list[list[int]]:
    from rlpost.chat import prompt_ids
    from rlpost.tasks import make_problems

    return [prompt_ids(tokenizer, p.prompt) for p in make_problems("arithmetic", "eval", count)]


def engine_greedy(actors, prompts, tokenizer, max_new_tokens: int = 24) -> list[list[int]]:
    """Rollout worker 0's greedy completions of `prompts`."""
    import ray

    from rlpost.tokenizer import stop_token_ids

    out = actors.rollouts[0].generate.remote(
        prompts, n=1, max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=stop_token_ids(tokenizer)
    )
    return [g[0].token_ids for g in ray.get(out)]


def train_on_random_tokens(actors, prompts) -> None:
    """One learner update on random completions with ±1 advantages: the weights surely move."""
    import random

    from rlpost.rl.trajectory import Trajectory

    rng = random.Random(0)
    trajectories = [
        Trajectory(
            prompts[i % len(prompts)],
            [rng.randrange(20, 500) for _ in range(24)],
            [-5.0] * 24,
            [1] * 24,
            [rng.choice([-1.0, 1.0])] * 24,
        )
        for i in range(16)
    ]
    actors.learners.call("train", trajectories, 1.0)


def assert_a_busy_engine_times_the_sync_out(actors) -> None:
    """Rollout worker 0 is busy and never takes a sync: the driver gives up after sync.timeout_s
    with an error naming the backend and the worker. (Actors left waiting in a broadcast are
    ended by the caller's shutdown.)"""
    import time

    from rlpost.distributed.weight_sync import WeightSyncTimeout

    actors.sync_timeout_s = 5
    actors.rollouts[0].__ray_call__.remote(lambda _: time.sleep(120))
    t0 = time.perf_counter()
    with pytest.raises(WeightSyncTimeout, match=rf"\({actors.sync_backend}\).*rollout worker 0.*sync\.timeout_s"):
        actors.sync_weights()
    assert time.perf_counter() - t0 < 5 + 5


def transformers_greedy(model_path, state, prompts, tokenizer, max_new_tokens: int = 24) -> list[list[int]]:
    """transformers' greedy completions of `prompts` with the weights `state` (fp32)."""
    import torch

    from rlpost.model import load_model
    from rlpost.tokenizer import stop_token_ids

    model = load_model(model_path, "float32")
    model.load_state_dict(state)
    model.eval()
    completions = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_token_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
        completions.append(out[0, len(ids) :].tolist())
    return completions


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def descendants(pid: int) -> set[int]:
    """Every process below `pid`: its Ray cluster's, too (workers are the raylet's children)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):  # ended meanwhile, or not a process
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(pid)
    return alive


@contextlib.contextmanager
def private_ray_env():
    """The recipe's environment: its own local Ray cluster, with its files in a folder of its own."""
    temp_dir = tempfile.mkdtemp(prefix="rlpost-ray-", dir="/tmp")  # short: Ray's socket paths live here
    try:
        yield {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": temp_dir}
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def answer_variants(problem) -> list[str]:
    """Four answers to one arithmetic problem that the SIMULATED grader tells apart: with a unit,
    the plain worked solution, one with a false step, and one with a wrong final answer."""
    import re

    from rlpost.tasks import STEP

    unit = re.search(r"\$|(\w+)\?$", problem.prompt)
    with_unit = problem.solution[:-1] + (f" {unit.group(1)}." if unit and unit.group(1) else ".")
    if unit and unit.group(0) == "$":
        with_unit = problem.solution.replace(f"is {problem.answer}.", f"is ${problem.answer}.")
    false_step = STEP.sub(lambda m: f"{m[1]} {m[2]} {m[3]} = {int(m[4]) + 1}", problem.solution, count=1)
    wrong = problem.solution.replace(f"is {problem.answer}.", f"is {int(problem.answer) + 3}.")
    return [with_unit, problem.solution, false_step, wrong]


def simulated_rankings(path: Path, prompts: int) -> Path:
    """A rankings file of `prompts` practice problems, each's `answer_variants` ordered by the
    SIMULATED grader (rlpost.rlhf.simulated_labeler)."""
    from rlpost.rlhf.simulated_labeler import label
    from rlpost.tasks import make_problems

    with open(path, "w") as f:
        for p in make_problems("arithmetic", "rl", prompts):
            f.write(json.dumps(label(p.prompt, answer_variants(p), p.answer)) + "\n")
    return path
