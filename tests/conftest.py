"""Shared fixtures: a tiny pretrained model and SFT model made by the real recipes, Ray, and a browser."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, PRETRAIN_ARGS, run_recipe

from rlpost.config import load_recipe


@pytest.fixture(scope="session")
def grpo_recipe():
    return load_recipe("grpo")


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
