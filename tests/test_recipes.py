"""End-to-end runs of the pretrain and SFT recipes on tiny settings (real DeepSpeed, vLLM, Ray)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from helpers import PRETRAIN_ARGS, ROOT, metrics, run_recipe

pytestmark = pytest.mark.slow


def _mean(xs):
    return sum(xs) / len(xs)


def test_pretrain_loss_falls_and_writes_model(pretrained):
    losses = [m["loss"] for m in metrics(pretrained)]
    assert len(losses) == 30
    assert _mean(losses[-5:]) < _mean(losses[:5]) - 1.0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (pretrained / "model" / name).exists()
    assert (pretrained / "config.yaml").exists()
    assert (pretrained / "checkpoints" / "latest").read_text() == "step_30"


def test_pretrain_resumes_after_interruption(pretrained, tmp_path):
    """Kill a run after its first checkpoint, resume it, and land on the uninterrupted losses."""
    run_dir = tmp_path / "run"
    args = [*PRETRAIN_ARGS, "--run_dir", str(run_dir)]
    proc = subprocess.Popen(
        [sys.executable, "recipes/pretrain.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while not (run_dir / "checkpoints" / "step_10").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = run_recipe("pretrain.py", [*args, "--resume"])
    resumed_from = int(out.stdout.split("resumed from step ")[1].split()[0])
    assert resumed_from >= 10
    resumed = {m["step"]: m["loss"] for m in metrics(run_dir)}
    reference = {m["step"]: m["loss"] for m in metrics(pretrained)}
    assert max(resumed) == 30
    # Same data order, weights, optimizer state and RNG: the resumed steps repeat the reference.
    for step in range(resumed_from + 1, 31):
        assert resumed[step] == pytest.approx(reference[step], abs=2e-3), step


def test_sft_trains_and_reports_held_out_accuracy(sft_run):
    losses = [m["loss"] for m in metrics(sft_run) if "loss" in m]
    assert _mean(losses[-5:]) < _mean(losses[:5])
    report = json.loads((sft_run / "eval.json").read_text())
    for task in ("arithmetic", "spelling_bee"):
        stats = report["greedy"][task]
        assert 0.0 <= stats["accuracy"] <= 1.0 and stats["problems"] == 16
    sampled = report["sampled"]["arithmetic"]
    assert sampled["problems"] == 16 and 0.0 <= sampled["accuracy"] <= sampled["pass@2"] <= 1.0
    assert [c["step"] for c in report["checkpoints"]] == [10, 20]
    assert (sft_run / "model" / "model.safetensors").exists()


def test_vllm_greedy_equals_transformers_on_trained_checkpoint(sft_run, ray_cluster):
    import ray
    import torch

    from rlpost.chat import prompt_ids
    from rlpost.distributed.engine import VLLMConfig, start_rollout_workers
    from rlpost.model import load_model
    from rlpost.tasks import make_problems
    from rlpost.tokenizer import load_tokenizer, stop_token_ids

    model_dir = sft_run / "model"
    tokenizer = load_tokenizer(model_dir)
    prompts = [prompt_ids(tokenizer, p.prompt) for p in make_problems("arithmetic", "eval", 6)]
    worker = start_rollout_workers(str(model_dir), VLLMConfig(dtype="float32", kv_cache_gib=0.25))[0]
    try:
        outs = ray.get(
            worker.generate.remote(
                prompts, n=1, max_new_tokens=48, temperature=0.0, stop_token_ids=stop_token_ids(tokenizer)
            )
        )
    finally:
        ray.kill(worker)
    model = load_model(model_dir, "float32").eval()
    for ids, group in zip(prompts, outs):
        with torch.no_grad():
            ref = model.generate(
                torch.tensor([ids]),
                max_new_tokens=48,
                do_sample=False,
                eos_token_id=stop_token_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
        assert group[0].token_ids == ref[0, len(ids) :].tolist()


def test_rollout_worker_with_a_fractional_cpu_share_uses_every_core(sft_run, ray_cluster):
    # Ray sets OMP_NUM_THREADS=1 in an actor with num_cpus < 2; the engine must not inherit it.
    import os

    import ray
    import torch

    from rlpost.distributed.engine import VLLMConfig, start_rollout_workers

    worker = start_rollout_workers(str(sft_run / "model"), VLLMConfig(num_cpus=0.5, kv_cache_gib=0.25))[0]
    try:
        assert ray.get(worker.__ray_call__.remote(lambda self: torch.get_num_threads())) == os.cpu_count()
    finally:
        ray.kill(worker)
