"""Shared fixtures: a tiny pretrained model and SFT model made by the real recipes, and Ray."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def grpo_recipe():
    return load_recipe("grpo")


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


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pretrain")
    run_recipe("pretrain.py", [*PRETRAIN_ARGS, "--run_dir", str(run_dir)])
    return run_dir


@pytest.fixture(scope="session")
def sft_run(pretrained, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("sft")
    run_recipe(
        "sft.py",
        [
            "--config",
            "recipes/configs/sft_tiny.yaml",
            "--model_path",
            str(pretrained / "model"),
            "--run_dir",
            str(run_dir),
            "--data.tasks",
            "{arithmetic: 64, spelling_bee: 32}",
            "--train.steps",
            "20",
            "--train.batch_size",
            "16",
            "--train.checkpoint_every",
            "10",
            "--checkpoint_eval.problems_per_task",
            "8",
            "--final_eval.problems_per_task",
            "16",
            "--sampled_eval.problems_per_task",
            "16",
            "--sampled_eval.samples",
            "2",
            "--sampled_eval_tasks",
            "[arithmetic]",
            "--logging.wandb_mode",
            "disabled",
        ],
    )
    return run_dir


@pytest.fixture(scope="module")
def ray_cluster():
    """A private local Ray for tests that drive actors from the test process (one per module, so
    modules never see each other's actors)."""
    import ray

    from rlpost.cache import cache_env

    temp_dir = tempfile.mkdtemp(prefix="rlpost-ray-", dir="/tmp")
    ray.init(
        address="local",  # never join another cluster running on this machine
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": cache_env()},
        configure_logging=False,
    )
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tool_sft_run(pretrained, tmp_path_factory) -> Path:
    """An SFT model that opens every spelling-bee answer with a Python call: conversations made
    of the tool part of the spelling-bee solutions (`<|python_start|>'word'.count('l')...`), so a
    barely pretrained model learns to call the tool within a few dozen steps."""
    from rlpost.tasks import make_problems
    from rlpost.tokenizer import PYTHON_START

    run_dir = tmp_path_factory.mktemp("tool_sft")
    with open(run_dir / "tool_conversations.jsonl", "w") as f:
        for p in make_problems("spelling_bee", "sft", 64, with_tool=True):
            answer = p.solution[p.solution.index(PYTHON_START) :]
            f.write(
                json.dumps(
                    {"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": answer}]}
                )
                + "\n"
            )
    run_recipe(
        "sft.py",
        [
            "--config",
            "recipes/configs/sft_tiny.yaml",
            "--model_path",
            str(pretrained / "model"),
            "--run_dir",
            str(run_dir),
            "--data.tasks",
            "{spelling_bee: 0}",
            "--data.conversations",
            f"[{run_dir / 'tool_conversations.jsonl'}]",
            "--train.steps",
            "60",
            "--train.batch_size",
            "16",
            "--train.checkpoint_every",
            "60",
            "--checkpoint_eval.problems_per_task",
            "8",
            "--final_eval.problems_per_task",
            "16",
            "--final_eval.max_new_tokens",
            "48",
            "--sampled_eval_tasks",
            "[]",
            "--logging.wandb_mode",
            "disabled",
        ],
    )
    return run_dir


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


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright, for the pages the tests click (CI fails without it).

    Module-scoped: Playwright's sync API keeps an event loop running while it is open,
    which later tests that call ``asyncio.run`` must not inherit.
    """
    if CHROMIUM is None:
        message = "chromium is not installed (scripts/setup.sh installs it with apt when run as root)"
        if os.environ.get("CI"):  # CI must open the pages in a real browser, never skip
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the 'test' extra)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
