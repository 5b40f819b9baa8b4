"""RLHF end to end on the tiny model, with SIMULATED rankings: DPO, PPO and GRPO against hardened
reward models, and reward hacking shown and caught.

    .venv/bin/python bench/rlhf_tiny.py [--minutes 10]             pipeline → bench/results/rlhf_tiny.json
    .venv/bin/python bench/rlhf_tiny.py hacking [--minutes 15]     hacking  → bench/results/reward_hacking_tiny.json
    (after `make quickstart` has written runs/sft_tiny/model; runs go to runs/bench_rlhf, and a finished
    reward model, DPO or RL run found there is reused: delete its folder to run it again)

No person ranks anything here: the SIMULATED labeler (`rlpost.rlhf.simulated_labeler`, recorded as
"simulated:arithmetic_grader") orders answers by a hidden preference that grades like a teacher
(correct; then sound text; then work shown, with fewer bad steps; a unit and brevity break ties).
Reward models and DPO see only its rankings; the hidden preference itself judges the results.

pipeline: the SFT model answers 1,200 arithmetic practice problems 5 times (vLLM, cached in
    runs/bench_reward_model_tiny/candidates.jsonl) → the simulated labeler ranks them → 200
    prompts held out (split seed 0), 1,000 to train on →
    - a hardened reward model: an ensemble of 3 Plackett–Luce reward models (seeds 0, 1, 2, with
      synthetic negatives: `--data.synthetic_negatives true`), whose reward is mean − 1.0·std of
      the members' normalised scores; each member, the ensemble and the "longer wins" /
      "shorter wins" baselines are scored on the 200 held-out rankings;
    - DPO (recipes/configs/dpo_tiny.yaml) on the same rankings and split, timed;
    - PPO (rlhf_tiny.yaml, critic from member 0) and GRPO (grpo_tiny.yaml, 16 prompts × 4 samples)
      against the ensemble, `--minutes` each (the hidden score runs as a weight-0 reward: logged,
      never trained on);
    → on 500 held-out problems, one sample per model (SFT, DPO, PPO, GRPO) at temperature 1:
    accuracy and the win rate against SFT under the hidden preference (95 % bootstrap
    intervals), length, KL to SFT, the ensemble's score, the monitor's first alarms; and a
    verdict per trained model (its rule is written beside it).
hacking: PPO without a KL leash against a weak reward model (100 ranked prompts), with the
    monitor's judge the pipeline's ensemble; the same run with β = 0.2; and without a leash
    against a hardened weak reward: an ensemble of 3 weak reward models (seeds 0, 1, 2, synthetic
    negatives, λ = 1.0); `--minutes` each. Reports the step where accuracy (the hidden
    preference's first key) peaked, where it had fallen 5 points below that peak, where each
    monitor alarm first fired, and the monitor's printed samples at that moment.

Every reward model, DPO and the held-out scoring here share one split (split seed 0): the members
of an ensemble differ only in `seed` (`--data.split_seed 0`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rlhf_eval import PENALTY, first_alarms, policies_held_out, reward_models_held_out, verdict

from rlpost.cache import apply_cache_env
from rlpost.config import load_config, load_recipe
from rlpost.metrics import read_metrics, write_bench_result
from rlpost.rlhf.candidates import load_prompts, sample_candidates
from rlpost.rlhf.ranking_formats import load_rankings
from rlpost.rlhf.rankings import split_by_prompt
from rlpost.rlhf.simulated_labeler import LABELER, label
from rlpost.tasks import make_problems

ROOT = Path(__file__).resolve().parent.parent
SFT_MODEL = ROOT / "runs/sft_tiny/model"
RUN = ROOT / "runs/bench_rlhf"
CANDIDATES = ROOT / "runs/bench_reward_model_tiny/candidates.jsonl"  # shared with bench/reward_model_tiny.py
PROMPTS, HELD_OUT, K, EVAL_PROBLEMS = 1200, 200, 5, 500
TRAIN_PROMPTS, WEAK_PROMPTS = PROMPTS - HELD_OUT, 100
SEEDS = (0, 1, 2)
HIDDEN = "rlpost.rlhf.simulated_labeler:hidden_preference_reward"
HIDDEN_KEY = "reward/hidden_preference_reward"
LABELER_NOTE = f"{LABELER} (a scripted preference, not a person)"


def rankings() -> tuple[Path, list]:
    """The SFT model's answers ranked by the simulated labeler (sampling cached): the file of every
    ranking, and the held-out rankings (split seed 0)."""
    candidates = sample_candidates(
        str(SFT_MODEL), load_prompts({"arithmetic": PROMPTS}), K, CANDIDATES, max_new_tokens=128
    )
    everything = RUN / "rankings.jsonl"
    everything.parent.mkdir(parents=True, exist_ok=True)
    everything.write_text(
        "".join(json.dumps(label(c["prompt"], c["responses"], c["answer"])) + "\n" for c in candidates)
    )
    _, held_out = split_by_prompt(load_rankings(everything), HELD_OUT, seed=0)  # the recipes' split, seed 0
    return everything, held_out


def reward_model(name: str, everything: Path, prompts: int, epochs: float, seed: int, synthetic: bool) -> Path:
    """A Plackett–Luce reward model on the first `prompts` training prompts (kept when already trained)."""
    run_dir = RUN / name
    if not (run_dir / "model").exists():
        recipe = load_recipe("reward_model")
        cfg = load_config(recipe.RewardModelConfig, [
            "--config", "recipes/configs/reward_model_tiny.yaml", "--model_path", str(SFT_MODEL),
            "--run_dir", str(run_dir), "--data.files", f"[{everything}]", "--data.held_out", str(HELD_OUT), "--data.split_seed", "0",
            "--data.max_train_prompts", str(prompts), "--data.synthetic_negatives", str(synthetic).lower(),
            "--seed", str(seed), "--loss.type", "plackett_luce", "--train.epochs", str(epochs),
            "--logging.wandb_mode", "disabled",
        ])  # fmt: skip
        recipe.main(cfg)
    return run_dir / "model"


def ensemble(name: str, everything: Path, prompts: int, epochs: float) -> list[Path]:
    """One hardened reward model per seed of `SEEDS` (synthetic negatives), on the same prompts."""
    return [reward_model(f"{name}/seed_{seed}", everything, prompts, epochs, seed, True) for seed in SEEDS]


def reward_spec(paths: list[Path]) -> str:
    """A rewards.functions entry (flow YAML): one reward model, or an ensemble paying mean − λ·std."""
    if len(paths) == 1:
        return f"{{name: reward_model, timeout_s: 300, kwargs: {{path: '{paths[0]}', batch_size: 32}}}}"
    listed = ", ".join(f"'{p}'" for p in paths)
    kwargs = f"paths: [{listed}], penalty: {PENALTY}, batch_size: 32, normalize: true"
    return f"{{name: reward_model, timeout_s: 300, kwargs: {{{kwargs}}}}}"


def dpo(everything: Path) -> tuple[Path, dict]:
    """DPO (dpo_tiny.yaml) on the rankings with the reward models' held-out prompts (split seed 0)
    held out; its held-out implicit-reward accuracy and wall time (kept when already trained)."""
    run_dir = RUN / "dpo"
    timing = run_dir / "bench_wall_s.json"
    if not (run_dir / "model").exists():
        recipe = load_recipe("dpo")
        cfg = load_config(recipe.DPOConfig, [
            "--config", "recipes/configs/dpo_tiny.yaml", "--model_path", str(SFT_MODEL), "--run_dir", str(run_dir),
            "--data.files", f"[{everything}]", "--data.held_out", str(HELD_OUT), "--seed", "0",
            "--logging.wandb_mode", "disabled",
        ])  # fmt: skip
        start = time.time()
        result = recipe.main(cfg)
        timing.write_text(json.dumps({"wall_s": round(time.time() - start, 1), **result}))
    return run_dir / "model", json.loads(timing.read_text())


def rl(recipe: str, config: str, run_dir: Path, reward: str, extra: list[str], minutes: float) -> list[dict]:
    """An RL run against `reward` with the hidden score logged at weight 0; its output is kept in
    <run_dir>.log; returns its step metrics."""
    if (run_dir / "model").exists():  # a finished run: reuse it (delete the folder to run it again)
        print(f"reusing the finished run in {run_dir}")
        return [m for m in read_metrics(run_dir) if "time/step" in m]
    shutil.rmtree(run_dir, ignore_errors=True)
    rewards = f"[{reward}, {{name: '{HIDDEN}', weight: 0, timeout_s: 60}}]"  # 10 s: its first call timed out on a busy machine
    args = [f"recipes/{recipe}.py", "--config", config, "--model_path", str(SFT_MODEL), "--run_dir", str(run_dir),
            "--rewards.functions", rewards, "--train.max_minutes", str(minutes), "--logging.wandb_mode", "disabled", *extra]  # fmt: skip
    print("$ python " + " ".join(args), flush=True)
    with open(f"{run_dir}.log", "w") as log:
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return [m for m in read_metrics(run_dir) if "time/step" in m]


def series(steps: list[dict], key: str) -> list[float | None]:
    """`key` at every step, None where a step has no value (e.g. every reward call failed)."""
    return [None if m.get(key) is None else round(m[key], 4) for m in steps]


def pipeline(minutes: float) -> dict:
    everything, held_out = rankings()
    members = ensemble("reward_model", everything, TRAIN_PROMPTS, epochs=1)
    dpo_model, dpo_result = dpo(everything)
    reward = reward_spec(members)
    runs = {
        "ppo": rl("ppo", "recipes/configs/rlhf_tiny.yaml", RUN / "ppo", reward, ["--critic.path", str(members[0])], minutes),
        # 16 prompts × 4 samples: the same 64 samples per step as PPO's 64 prompts × 1
        "grpo": rl("grpo", "recipes/configs/grpo_tiny.yaml", RUN / "grpo", reward, ["--rollout.prompts_per_step", "16"], minutes),
    }  # fmt: skip
    models = {"sft": SFT_MODEL, "dpo": dpo_model, **{name: RUN / name / "model" for name in runs}}
    alarms = {name: first_alarms(steps) for name, steps in runs.items()}  # DPO trains on no reward: no monitor
    held = policies_held_out(models, make_problems("arithmetic", "eval", EVAL_PROBLEMS), members, alarms)
    member_keys = [f"reward/reward_model/member_{i}" for i in range(len(members))]
    return {
        "labeler": LABELER_NOTE,
        "rankings": {
            "prompts": len(load_rankings(everything)),
            "responses_per_prompt": K,
            "held_out_prompts": HELD_OUT,
        },
        "reward_model": {
            "members": len(members),
            "training_prompts": TRAIN_PROMPTS,
            "loss": "plackett_luce",
            "synthetic_negatives": True,
            "reward": f"mean − {PENALTY}·std of the members' normalised scores",
            "held_out": reward_models_held_out(members, held_out),
        },
        "dpo": {
            "config": "recipes/configs/dpo_tiny.yaml",
            "held_out_split": "the reward models' (seed 0)",
            **dpo_result,
        },
        "rl_minutes": minutes,
        "held_out": held,
        "eval": f"{EVAL_PROBLEMS} held-out arithmetic problems, one sample per model (temperature 1)",
        "verdict": verdict(held, ("dpo", *runs)),
        "over_steps": {
            name: {
                "reward_model": series(steps, "reward/reward_model"),
                "members": [series(steps, key) for key in member_keys],
                "members_std": series(steps, "reward/reward_model/std"),
                "hidden_score": series(steps, HIDDEN_KEY),
                "kl": series(steps, "kl"),
                "accuracy": series(steps, "accuracy"),
            }
            for name, steps in runs.items()
        },
    }


def smoothed(values: list[float], width: int = 5) -> list[float]:
    """Trailing moving average over the given values (one step's samples are noisy)."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - width + 1) : i + 1] if v is not None and v == v]
        out.append(statistics.fmean(window) if window else math.nan)
    return out


def peak_and_fall(values: list[float], points: float) -> tuple[int, int | None]:
    """Index of the highest value and of the first one after it `points` below it (None: never)."""
    given = [v if v == v else -math.inf for v in values]  # NaN (no value in the window) never peaks
    peak = max(range(len(given)), key=given.__getitem__)
    return peak, next((i for i in range(peak, len(given)) if given[i] <= given[peak] - points), None)


def hacking_report(steps: list[dict], log: Path) -> dict:
    """When the policy's answers got worse by the hidden preference, and when the monitor fired.
    Worse is judged by accuracy (the preference's first and dominant key: a correct answer beats
    every wrong one), smoothed over 5 steps: the scalar hidden score also rewards dropping bad
    steps and characters, which can rise while answers stop being right."""
    accuracy = smoothed(series(steps, "accuracy"))
    hidden = smoothed(series(steps, HIDDEN_KEY))
    peak, fell = peak_and_fall(accuracy, 0.05)
    printed = re.findall(r"^monitor, step \d+: .*?(?=^\S|\Z)", log.read_text(), flags=re.M | re.S)
    return {
        "steps": len(steps),
        "accuracy_peak_step": steps[peak]["step"],
        "accuracy_peak_smoothed": round(accuracy[peak], 4),
        "accuracy_fell_5_points_step": None if fell is None else steps[fell]["step"],
        "first_alarm_step": first_alarms(steps),
        "monitor_printed": printed[:3],
        "over_steps": {
            "reward_model": series(steps, "reward/reward_model"),
            "hidden_score": series(steps, HIDDEN_KEY),
            "hidden_score_smoothed": [round(h, 4) for h in hidden],
            "accuracy_smoothed": [round(a, 4) for a in accuracy],
            "accuracy": series(steps, "accuracy"),
            "judge": series(steps, "monitor/judge"),
            "kl": series(steps, "kl"),
            "response_len": series(steps, "response_len/mean"),
        },
    }


def hacking(minutes: float) -> dict:
    everything, held_out = rankings()
    weak = reward_model("weak_reward_model", everything, WEAK_PROMPTS, epochs=8, seed=0, synthetic=False)
    weak_members = ensemble("weak_reward_model_hardened", everything, WEAK_PROMPTS, epochs=8)
    judge = ensemble("reward_model", everything, TRAIN_PROMPTS, epochs=1)  # the pipeline's
    report = {
        "labeler": LABELER_NOTE,
        "weak_reward_model": {"ranked_prompts": WEAK_PROMPTS, "held_out": reward_models_held_out([weak], held_out)},
        "weak_ensemble": {
            "ranked_prompts": WEAK_PROMPTS,
            "members": len(weak_members),
            "synthetic_negatives": True,
            "reward": f"mean − {PENALTY}·std of the members' normalised scores",
            "held_out": reward_models_held_out(weak_members, held_out),
        },
        "judge": {
            "note": f"the pipeline's ensemble ({TRAIN_PROMPTS} ranked prompts)",
            "held_out": reward_models_held_out(judge, held_out),
        },
    }
    runs = (("no_kl", "0.0", [weak]), ("kl_0.2", "0.2", [weak]), ("no_kl_hardened", "0.0", weak_members))
    for name, beta, proxy in runs:
        run_dir = RUN / f"hacking_{name}"
        extra = ["--monitor.judge", reward_spec(judge), "--monitor.window", "10", "--critic.path", str(proxy[0]),
                 "--optim.lr", "2e-4", "--algo.kl_reward_coef", beta]  # fmt: skip
        steps = rl("ppo", "recipes/configs/rlhf_tiny.yaml", run_dir, reward_spec(proxy), extra, minutes)
        report[name] = {
            "kl_coef": float(beta),
            "reward_models": len(proxy),
            **hacking_report(steps, Path(f"{run_dir}.log")),
        }
        report[name]["plot"] = str((run_dir / "monitor.png").relative_to(ROOT))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=("pipeline", "hacking"), default="pipeline")
    parser.add_argument("--minutes", type=float, help="minutes per RL run (default: 10 pipeline, 15 hacking)")
    args = parser.parse_args()
    apply_cache_env()
    if not SFT_MODEL.exists():
        raise SystemExit(f"{SFT_MODEL} is missing: run `make quickstart` first")
    start = time.time()
    if args.part == "hacking":
        name, metrics = "reward_hacking_tiny", hacking(15.0 if args.minutes is None else args.minutes)
    else:
        name, metrics = "rlhf_tiny", pipeline(10.0 if args.minutes is None else args.minutes)
    command = " ".join([".venv/bin/python bench/rlhf_tiny.py", *sys.argv[1:]])
    write_bench_result(name, metrics, time.time() - start, command=command)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
