"""Lost workers lose nothing, through the real actors. One run, three faults:

    run A (in this process)   step 1; step 2: rollout worker 0 killed mid-generate (restarted, its
                              prompts sampled again, the collective sync replaced by the object
                              store's), then learner rank 0 lost at the checkpoint
                              → a RuntimeError that says to rerun with --resume
    run B (the recipe)        --resume: step 2 again from the step-1 checkpoint, then SIGKILL of
                              the whole process group during step 3
    run C (the recipe)        --resume: step 3 from the step-2 checkpoint

Every step samples the prompts an undisturbed run samples (the data cursor)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import GRPO_TINY_ARGS, ROOT, alive, descendants, grpo_config, metrics, private_ray_env
from tqdm import tqdm

from rlpost.config import load_recipe

pytestmark = pytest.mark.slow

PROMPTS = 4  # GRPO_TINY_ARGS' rollout.prompts_per_step
ARGS = [
    *(
        "--train.eval_every",
        "0",
        "--eval.max_new_tokens",
        "32",
        "--train.max_minutes",
        "0",
    ),  # only the final evaluation
    # fp32 on both sides: the learner's logprobs then match the engine's exactly, so a restarted
    # engine still on model_path's weights would show.
    *("--vllm.dtype", "float32", "--deepspeed.bf16", "false"),
    # The broadcast group is formed at start; a restarted engine is outside it, so the run turns
    # to the object store for the syncs after it (both paths run here).
    *("--sync.backend", "collective"),
]

# The tiny SFT model's answers all run past 32 tokens (math 0, length -1 for every sample): a
# reward on their characters gives every step a signal, so that step 1 moves the policy.
SHORTER = """
def shorter(prompts, completions, **columns):
    return [-len(c) / 100 for c in completions]
"""


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    """The runs' arguments after GRPO_TINY_ARGS."""
    path = tmp_path_factory.mktemp("rewards") / "shorter.py"
    path.write_text(SHORTER)
    return [*ARGS, "--rewards.functions", f"[{{name: math}}, {{name: '{path}:shorter'}}]", "--train.steps", "3"]


def undisturbed_prompts(cfg, step: int) -> list:
    """The prompts an undisturbed run samples at `step` (1-based): a pure function of the cursor."""
    from rlpost.rl.steps import problems_at, prompt_pool

    return [p.prompt for p in problems_at(prompt_pool(cfg.data), (step - 1) * PROMPTS, PROMPTS, cfg.seed)]


def steps_and_cursors(run_dir: Path) -> list[tuple[int, int]]:
    return [(m["step"], m["cursor"]) for m in metrics(run_dir) if "cursor" in m]


@pytest.fixture(scope="module")
def run_a(sft_run, ray_cluster, tmp_path_factory, args):
    """Returns the run's folder and config, its error, the driver's output, (prompts, number of
    samples) per sample_groups call and the update metrics per step."""
    import ray

    from rlpost.rl import steps as rl_steps
    from rlpost.rl.actors import RLActors

    grpo = load_recipe("grpo")
    run_dir = tmp_path_factory.mktemp("faults")
    cfg = grpo_config(sft_run / "model", run_dir, args)
    sampled, updates = [], []
    sample_groups, generate_surviving = rl_steps.sample_groups, rl_steps._generate_surviving
    update, save_checkpoint = grpo.GRPO.update, RLActors.save_checkpoint

    def recording_sample_groups(actors, tokenizer, problems, rollout, tools):
        ids, samples, tool_s = sample_groups(actors, tokenizer, problems, rollout, tools)
        sampled.append(([p.prompt for p in problems], len(samples)))
        return ids, samples, tool_s

    def kill_during_step_2(actors, index, chunk, ref, kwargs):
        if len(sampled) == 1:  # step 2's generate call was just submitted
            ray.wait([ref], timeout=0.1)  # let the engine start on it
            ray.kill(actors.rollouts[index], no_restart=False)  # a crash: Ray restarts the actor
        return generate_surviving(actors, index, chunk, ref, kwargs)

    def recording_update(self, actors, groups, step):
        result = update(self, actors, groups, step)
        updates.append(result[0])
        return result

    def lose_learner_at_step_2(self, run_dir, step, state):
        if step == 2:
            ray.kill(self.learners[0])
        save_checkpoint(self, run_dir, step, state)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(rl_steps, "sample_groups", recording_sample_groups)
        mp.setattr(rl_steps, "_generate_surviving", kill_during_step_2)
        mp.setattr(grpo.GRPO, "update", recording_update)
        mp.setattr(RLActors, "save_checkpoint", lose_learner_at_step_2)
        with pytest.raises(RuntimeError) as error:
            grpo.main(cfg)
    return run_dir, cfg, error.value, out.getvalue(), sampled, updates


def test_a_rollout_worker_killed_mid_generate_is_restarted_and_its_prompts_sampled_again(run_a):
    run_dir, cfg, _, out, sampled, updates = run_a
    assert "warning: rollout worker 0 died during generate" in out
    assert "weight syncs go through the object store from now on" in out
    # Both steps sampled their whole batch, from the prompts an undisturbed run uses.
    assert [(prompts, n) for prompts, n in sampled] == [
        (undisturbed_prompts(cfg, step), PROMPTS * cfg.rollout.n) for step in (1, 2)
    ]
    # The restarted engine sampled step 2 with the learner's weights after step 1's update, not
    # model_path's (those give a gap of about 0.6).
    assert len(updates) == 2 and updates[0]["samples_trained"] > 0
    assert updates[1]["logprob_gap"] < 1e-3


def _recipe(run_dir: Path, model: Path, args: list[str]) -> list[str]:
    """The command line of the recipe as a user runs it: run A's config, resumed."""
    config = ["--config", "recipes/configs/grpo_tiny.yaml", "--model_path", str(model), "--run_dir", str(run_dir)]
    return [sys.executable, "recipes/grpo.py", *config, *GRPO_TINY_ARGS, *args, "--resume"]


@pytest.fixture(scope="module")
def run_b(run_a, sft_run, args):
    """Run A resumed by the recipe, SIGKILLed (its process group) once step 2 is logged. Returns
    its output, the processes it had started and those of them that outlived it."""
    run_dir = run_a[0]
    log = run_dir / "run_b.log"
    started = set()
    with private_ray_env() as env:
        with open(log, "w") as f:
            proc = subprocess.Popen(
                _recipe(run_dir, sft_run / "model", args),
                cwd=ROOT,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.time() + 900
            # Step 2's metrics line is written right after its checkpoint.
            while '"step": 2' not in (run_dir / "metrics.jsonl").read_text():
                assert proc.poll() is None, f"run B ended before step 2:\n{log.read_text()[-5000:]}"
                assert time.time() < deadline, f"run B: no step 2 after 900 s:\n{log.read_text()[-5000:]}"
                time.sleep(0.2)
            started = descendants(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # The cluster's own processes share the driver's process group; its workers, in sessions
        # of their own, exit once their raylet is gone.
        deadline = time.time() + 60
        while alive(started) and time.time() < deadline:
            time.sleep(0.5)
        leaked = alive(started)
        for pid in leaked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return log.read_text(), started, leaked


def test_a_lost_learner_rank_stops_the_run_and_resume_continues_it(run_a, run_b):
    run_dir, cfg, error, *_ = run_a
    message = str(error)
    assert "learner rank 0 died" in message and "rerun with --resume" in message
    assert str(run_dir) in message and "step_1" in message
    # The stopped run's progress bar is closed, though its error (and so its frames) is still held:
    # an open one would make every later bar in the process draw as a nested one.
    assert not [bar for bar in tqdm._instances if bar.desc == "grpo"]
    out, _, _ = run_b
    assert "resumed from step 1" in out
    # Step 2 again, with the prompts an undisturbed run samples.
    assert steps_and_cursors(run_dir)[:2] == [(1, PROMPTS), (2, 2 * PROMPTS)]


def test_a_driver_killed_with_sigkill_resumes_from_its_last_checkpoint(run_a, run_b, sft_run, args):
    run_dir = run_a[0]
    _, started, leaked = run_b
    assert len(started) > 3  # GCS, raylet, the actors ...
    assert not leaked, "processes of the killed driver's Ray cluster outlived it"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_2"
    with private_ray_env() as env:
        run_c = subprocess.run(
            _recipe(run_dir, sft_run / "model", args),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert run_c.returncode == 0, run_c.stdout[-3000:] + run_c.stderr[-5000:]
    assert "resumed from step 2" in run_c.stdout
    # Step 3 from where step 2's checkpoint left the cursor: the prompts an undisturbed run samples.
    assert steps_and_cursors(run_dir)[-1] == (3, 3 * PROMPTS)
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_3"
