"""DPO from rankings through the recipe (recipes/dpo.py) on the tiny SFT model: TRL's metrics, the
cached reference log-probs, resume, and the policy moving towards the preferred answers.

The rankings are made by the SIMULATED grader (`rlpost.rlhf.simulated_labeler`) from hand-varied
worked solutions (tests/helpers.py: simulated_rankings)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import metrics, run_recipe, simulated_rankings

pytestmark = pytest.mark.slow


def dpo_args(model, rankings, run_dir, *extra) -> list[str]:
    return ["--config", "recipes/configs/dpo_tiny.yaml", "--model_path", str(model), "--run_dir", str(run_dir),
            "--data.files", f"[{rankings}]", "--data.held_out", "20", "--train.batch_size", "4",
            "--train.micro_batch_size", "2", "--train.checkpoint_every", "2", "--optim.lr", "1e-4",
            "--optim.warmup_steps", "0", "--logging.wandb_mode", "disabled", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def dpo_run(sft_run, tmp_path_factory):
    rankings = simulated_rankings(tmp_path_factory.mktemp("rankings") / "simulated.jsonl", 80)
    run_dir = tmp_path_factory.mktemp("dpo")
    # Left by an earlier run in the same folder: a fresh run recomputes instead of reading it.
    torch.save("stale", run_dir / "reference_logps_train.pt")
    run_recipe("dpo.py", dpo_args(sft_run / "model", rankings, run_dir, "--train.steps", "2"))
    cached = (run_dir / "reference_logps_train.pt").stat().st_mtime
    resumed = run_recipe("dpo.py", dpo_args(sft_run / "model", rankings, run_dir, "--train.steps", "8", "--resume"))
    return run_dir, cached, resumed.stdout


def test_two_dpo_steps_log_trls_metrics_and_save_the_policy(dpo_run):
    run_dir, _, _ = dpo_run
    steps = [m for m in metrics(run_dir) if "rewards/margins" in m]
    assert [m["step"] for m in steps][:2] == [1, 2]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert name in steps[0]
    # Step 1 starts at the reference: every implicit reward is 0, and the loss is log 2.
    assert steps[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-3) and steps[0]["loss"] == pytest.approx(
        0.693, abs=1e-3
    )
    assert (run_dir / "model" / "config.json").exists()
    held_out = json.loads((run_dir / "eval.json").read_text())
    assert held_out["eval/pairs"] > 0


def test_resume_continues_with_the_cached_reference_and_the_policy_prefers_the_chosen(dpo_run):
    run_dir, cached, out = dpo_run
    assert "resumed from step 2" in out
    assert (run_dir / "reference_logps_train.pt").stat().st_mtime == cached  # read back, not recomputed
    steps = [m for m in metrics(run_dir) if "rewards/margins" in m]
    assert [m["step"] for m in steps] == list(range(1, 9))
    # Six more steps at lr 1e-4: the policy's implicit reward prefers the chosen answers it trains on.
    assert sum(m["rewards/margins"] for m in steps[-3:]) > 0


def test_a_bad_rankings_line_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "responses": ["a", "b"], "order": [0, 0]}\n')
    import subprocess
    import sys

    from helpers import ROOT

    proc = subprocess.run([sys.executable, "recipes/dpo.py", *dpo_args(tmp_path, bad, tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0
    assert f"{bad}" in proc.stderr or f"{bad}" in proc.stdout
