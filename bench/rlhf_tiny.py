"""RLHF end to end on the tiny model, with SIMULATED rankings, and reward hacking shown and caught.

    .venv/bin/python bench/rlhf_tiny.py             pipeline → bench/results/rlhf_tiny.json
    .venv/bin/python bench/rlhf_tiny.py hacking     hacking  → bench/results/reward_hacking_tiny.json
    (after `make quickstart` has written runs/sft_tiny/model)

No person ranks anything here: the SIMULATED labeler (`rlpost.rlhf.simulated_labeler`, recorded as
"simulated:arithmetic_preference") orders answers by a hidden preference (correct, then fewer
false arithmetic steps, then a stated unit, then shorter). Reward models see only its rankings;
the hidden preference itself judges the results.

pipeline: the SFT model answers 1,200 practice problems 5 times (vLLM) → the simulated labeler
    ranks them → a reward model (Plackett–Luce, 1,000 prompts) → PPO (critic from the reward
    model) and GRPO against it, 10 minutes each → on 500 held-out problems, one sample per
    model per prompt: the win rate against the SFT model under the hidden preference (95 %
    bootstrap interval), and the reward-model and hidden scores over the training steps (the
    hidden score runs as a weight-0 reward: logged, never trained on).
hacking: PPO without a KL leash against a weak reward model (100 ranked prompts), with the
    monitor's judge a second, stronger reward model (the pipeline's: 1,000 ranked prompts, of
    which the weak one saw 100), then the same run with β = 0.2; 15 minutes each. Reports the
    step where accuracy (the hidden preference's first key) peaked, where it had fallen 5
    points below that peak, where each monitor alarm first fired, and the monitor's printed
    samples at that moment.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SFT_MODEL = ROOT / "runs/sft_tiny/model"
RUN = ROOT / "runs/bench_rlhf"
CANDIDATES = ROOT / "runs/bench_reward_model_tiny/candidates.jsonl"  # shared with bench/reward_model_tiny.py
PROMPTS, HELD_OUT, K, EVAL_PROBLEMS = 1200, 200, 5, 500
HIDDEN = "rlpost.rlhf.simulated_labeler:hidden_preference_reward"
HIDDEN_KEY = "reward/hidden_preference_reward"


def rankings() -> Path:
    """The SFT model's answers ranked by the simulated labeler (sampling cached)."""
    from rlpost.rlhf.candidates import load_prompts, sample_candidates
    from rlpost.rlhf.simulated_labeler import label

    candidates = sample_candidates(
        str(SFT_MODEL), load_prompts({"arithmetic": PROMPTS}), K, CANDIDATES, max_new_tokens=128
    )
    path = RUN / "rankings.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(label(c["prompt"], c["responses"], c["answer"])) + "\n" for c in candidates))
    return path


def reward_model(name: str, ranked: Path, prompts: int, epochs: float, seed: int = 0) -> tuple[Path, dict]:
    """A Plackett–Luce reward model on `prompts` ranked prompts (kept when already trained)."""
    from rlpost.config import load_config, load_recipe
    from rlpost.rlhf.reward_model import read_card

    run_dir = RUN / name
    if not (run_dir / "model").exists():
        recipe = load_recipe("reward_model")
        cfg = load_config(recipe.RewardModelConfig, [
            "--config", "recipes/configs/reward_model_tiny.yaml", "--model_path", str(SFT_MODEL),
            "--run_dir", str(run_dir), "--data.files", f"[{ranked}]", "--data.held_out", str(HELD_OUT),
            "--data.max_train_prompts", str(prompts), "--seed", str(seed), "--loss.type", "plackett_luce",
            "--train.epochs", str(epochs), "--logging.wandb_mode", "disabled",
        ])  # fmt: skip
        recipe.main(cfg)
    card = read_card(run_dir / "model")
    return run_dir / "model", {k: card["held_out"][k] for k in ("pair_accuracy", "best_worst_accuracy")}


def rl(recipe: str, config: str, run_dir: Path, rm: Path, extra: list[str], minutes: float = 10) -> list[dict]:
    """An RL run against the reward model `rm` with the hidden score logged at weight 0; its output
    is kept in <run_dir>.log; returns its step metrics."""
    import shutil

    from rlpost.metrics import read_metrics

    if (run_dir / "model").exists():  # a finished run: reuse it (delete the folder to run it again)
        print(f"reusing the finished run in {run_dir}")
        return [m for m in read_metrics(run_dir) if "time/step" in m]
    shutil.rmtree(run_dir, ignore_errors=True)
    rewards = f"[{{name: reward_model, timeout_s: 300, kwargs: {{path: '{rm}', batch_size: 32}}}}, {{name: '{HIDDEN}', weight: 0}}]"
    args = [f"recipes/{recipe}.py", "--config", config, "--model_path", str(SFT_MODEL), "--run_dir", str(run_dir),
            "--rewards.functions", rewards, "--train.max_minutes", str(minutes), "--logging.wandb_mode", "disabled", *extra]  # fmt: skip
    print("$ python " + " ".join(args), flush=True)
    with open(f"{run_dir}.log", "w") as log:
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return [m for m in read_metrics(run_dir) if "time/step" in m]


def series(steps: list[dict], key: str) -> list[float | None]:
    """`key` at every step, None where a step has no value (e.g. every reward call failed)."""
    return [None if m.get(key) is None else round(m[key], 4) for m in steps]


def pipeline() -> dict:
    from rlpost.distributed.cluster import init_ray
    from rlpost.evaluate import EvalConfig, evaluate_models
    from rlpost.rlhf.reward_model import RewardScorer
    from rlpost.rlhf.simulated_labeler import hidden_score, hidden_win_rate
    from rlpost.tasks import make_problems

    rm, rm_metrics = reward_model("reward_model", rankings(), 1000, epochs=2)
    runs = {
        "ppo": rl("ppo", "recipes/configs/rlhf_tiny.yaml", RUN / "ppo", rm, ["--critic.path", str(rm)]),
        # 16 prompts × 4 samples: the same 64 samples per step as PPO's 64 prompts × 1
        "grpo": rl("grpo", "recipes/configs/grpo_tiny.yaml", RUN / "grpo", rm, ["--rollout.prompts_per_step", "16"]),
    }
    init_ray()
    problems = make_problems("arithmetic", "eval", EVAL_PROBLEMS)
    models = {"sft": SFT_MODEL, **{name: RUN / name / "model" for name in runs}}
    results = evaluate_models({k: str(v) for k, v in models.items()}, problems,
                              {"sampled": EvalConfig(temperature=1.0, samples=1, max_new_tokens=128)})  # fmt: skip
    texts = {name: [t["completion"] for t in r["sampled"].transcripts] for name, r in results.items()}
    prompts, answers = [p.prompt for p in problems], [p.answer for p in problems]
    scorer = RewardScorer(rm, batch_size=32)
    held_out = {
        name: {
            "accuracy": results[name]["sampled"].accuracy["arithmetic"],
            "hidden_score_mean": statistics.fmean(
                hidden_score(p, t, a) for p, t, a in zip(prompts, texts[name], answers)
            ),
            "reward_model_score_mean": statistics.fmean(scorer.normalized(scorer.score(prompts, texts[name]))),
            "chars_mean": statistics.fmean(map(len, texts[name])),
            **(
                {}
                if name == "sft"
                else {"win_rate_vs_sft": hidden_win_rate(prompts, answers, texts[name], texts["sft"])}
            ),
        }
        for name in models
    }
    return {
        "labeler": "simulated:arithmetic_preference (a scripted preference, not a person)",
        "reward_model": {"ranked_prompts": 1000, "loss": "plackett_luce", "held_out": rm_metrics},
        "held_out": held_out,
        "eval": f"{EVAL_PROBLEMS} held-out arithmetic problems, one sample per model (temperature 1)",
        "over_steps": {
            name: {
                "reward_model": series(steps, "reward/reward_model"),
                "hidden_score": series(steps, HIDDEN_KEY),
                "kl": series(steps, "kl"),
                "accuracy": series(steps, "accuracy"),
            }
            for name, steps in runs.items()
        },
        "example": {name: {"prompt": prompts[0], "response": texts[name][0]} for name in models},
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
    every wrong one), smoothed over 5 steps: the scalar hidden score averages the preference's
    keys and rises when answers drop their (false) steps, even while they stop being right."""
    accuracy = smoothed(series(steps, "accuracy"))
    hidden = smoothed(series(steps, HIDDEN_KEY))
    peak, fell = peak_and_fall(accuracy, 0.05)
    alarms = {
        key.removeprefix("monitor/alarm/"): next((m["step"] for m in steps if m.get(key)), None)
        for key in sorted({k for m in steps for k in m if k.startswith("monitor/alarm/")})
    }
    printed = re.findall(r"^monitor, step \d+: .*?(?=^\S|\Z)", log.read_text(), flags=re.M | re.S)
    return {
        "steps": len(steps),
        "accuracy_peak_step": steps[peak]["step"],
        "accuracy_peak_smoothed": round(accuracy[peak], 4),
        "accuracy_fell_5_points_step": None if fell is None else steps[fell]["step"],
        "first_alarm_step": alarms,
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


def hacking() -> dict:
    ranked = rankings()
    weak, weak_metrics = reward_model("weak_reward_model", ranked, 100, epochs=8)
    judge, judge_metrics = reward_model("reward_model", ranked, 1000, epochs=2)  # the pipeline's
    monitor = ["--monitor.judge", f"{{name: reward_model, timeout_s: 300, kwargs: {{path: '{judge}', batch_size: 32}}}}",
               "--monitor.window", "10", "--critic.path", str(weak), "--optim.lr", "2e-4"]  # fmt: skip
    report = {
        "labeler": "simulated:arithmetic_preference (a scripted preference, not a person)",
        "weak_reward_model": {"ranked_prompts": 100, "held_out": weak_metrics},
        "judge_reward_model": {
            "ranked_prompts": 1000,
            "note": "the pipeline's reward model",
            "held_out": judge_metrics,
        },
    }
    for name, beta in (("no_kl", "0.0"), ("kl_0.2", "0.2")):
        run_dir = RUN / f"hacking_{name}"
        steps = rl(
            "ppo",
            "recipes/configs/rlhf_tiny.yaml",
            run_dir,
            weak,
            [*monitor, "--algo.kl_reward_coef", beta],
            minutes=15,
        )
        report[name] = {"kl_coef": float(beta), **hacking_report(steps, Path(f"{run_dir}.log"))}
        report[name]["plot"] = str((run_dir / "monitor.png").relative_to(ROOT))
    return report


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.metrics import write_bench_result

    apply_cache_env()
    if not SFT_MODEL.exists():
        raise SystemExit(f"{SFT_MODEL} is missing: run `make quickstart` first")
    start = time.time()
    part = sys.argv[1] if len(sys.argv) > 1 else "pipeline"
    metrics = hacking() if part == "hacking" else pipeline()
    write_bench_result("reward_hacking_tiny" if part == "hacking" else "rlhf_tiny", metrics, time.time() - start)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
