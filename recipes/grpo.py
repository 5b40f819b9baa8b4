"""Stage 3: GRPO on answer-only practice problems, distributed over Ray actors.

    python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--rollout.n 16 --optim.lr 5e-5]
    ray job submit --working-dir . -- python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml

One step (the loop in `train`; each piece is a named function of rlpost/rl_steps.py):
    prompts ──▶ RolloutWorker × R (vLLM) ──▶ RewardWorker × W ──▶ group advantages per token
        ──▶ Learner ranks (DeepSpeed, PPO-clip) ──▶ weight sync to every engine ──▶ metrics
with a held-out evaluation every `eval_every` steps and at the end, and an atomic checkpoint
every `checkpoint_every` steps (`--resume` continues from the latest one). The reward-hacking
monitor (rlpost/hacking_monitor.py) reads every step and may end the run early. Metrics go to
`<run_dir>/metrics.jsonl` (and wandb, offline by default), the actors' own output to
`<run_dir>/actors.log`; the final policy is an HF folder in `<run_dir>/model`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.cache import apply_cache_env
from rlpost.cluster import PlacementConfig, SyncConfig, VLLMConfig
from rlpost.config import ConfigError, doc, parse_config, section
from rlpost.evaluate import EvalConfig
from rlpost.hacking_monitor import MonitorConfig
from rlpost.learner import PolicyLossConfig
from rlpost.metrics import LoggingConfig
from rlpost.rl_steps import AlgoConfig, RewardsConfig, RLData, RolloutConfig
from rlpost.tools import ToolConfig
from rlpost.trainer import DeepSpeedConfig, OptimConfig


@dataclass
class GRPOConfig:
    model_path: str = doc("Policy to start from: an HF folder (e.g. the SFT model).", "runs/sft_tiny/model")
    run_dir: str = doc("Output folder of this run.", "runs/grpo_tiny")
    resume: bool = doc("Continue from the latest checkpoint in run_dir.", False)
    seed: int = doc("Seed of prompt order and sampling.", 0)
    steps: int = doc("RL steps (each: rollouts, rewards, update, sync).", 100)
    max_minutes: float = doc("Stop after this many minutes of RL (0: no limit); the step count still bounds it.", 0.0)
    eval_every: int = doc("Held-out evaluation every N steps, and always at the end (0: only at the end).", 25)
    checkpoint_every: int = doc(
        "Checkpoint every N steps, and always at the end or when max_minutes stops the run (0: only then).", 25
    )
    data: RLData = section(RLData)
    rollout: RolloutConfig = section(RolloutConfig)
    vllm: VLLMConfig = field(default_factory=lambda: VLLMConfig(num_cpus=0.5))
    algo: AlgoConfig = section(AlgoConfig)
    loss: PolicyLossConfig = section(PolicyLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, grad_clip=1.0))
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig)
    sync: SyncConfig = section(SyncConfig)
    rewards: RewardsConfig = section(RewardsConfig)
    tools: ToolConfig = section(ToolConfig)
    placement: PlacementConfig = section(PlacementConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(problems_per_task=200))
    logging: LoggingConfig = section(LoggingConfig)
    monitor: MonitorConfig = section(MonitorConfig)

    def validate(self):
        for key in ("steps", "eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be 0 or more, got {getattr(self, key)}")
        if self.sync.every > 1 and self.loss.tis_cap <= 0:
            raise ConfigError(
                f"sync.every: {self.sync.every} lets the engines sample with weights older than the learner's; "
                "set loss.tis_cap (e.g. 2.0) so the learner corrects for it"
            )


def train(cfg: GRPOConfig) -> dict:
    from tqdm import tqdm

    from rlpost.cluster import RLActors, init_ray
    from rlpost.config import check_path, save_config, to_dict
    from rlpost.evaluate import evaluate
    from rlpost.hacking_monitor import Monitor, with_judge
    from rlpost.metrics import MetricsLogger
    from rlpost.rl_steps import build_trajectories, collect_groups, monitor_signals, prompt_pool, step_metrics
    from rlpost.tasks import VERIFIERS, make_problems
    from rlpost.tokenizer import load_tokenizer

    check_path("model_path", cfg.model_path)
    if cfg.data.gsm8k:
        check_path("data.gsm8k", cfg.data.gsm8k)
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    tokenizer = load_tokenizer(cfg.model_path)
    pool = prompt_pool(cfg.data)
    held_out = [p for task in cfg.data.tasks for p in make_problems(task, "eval", cfg.eval.problems_per_task)]

    init_ray(run_log=run_dir / "actors.log")
    print(f"starting the actors (their output goes to {run_dir / 'actors.log'})")
    # The monitor's judge, if any, runs in the reward workers as one more reward function of weight 0.
    actors = RLActors(
        with_judge(cfg), total_steps=cfg.steps, verifiers={t: VERIFIERS[t] for t in {p.task for p in pool}}
    )
    logger = MetricsLogger(run_dir, cfg.logging, "grpo", config=to_dict(cfg))
    step, cursor = 0, 0
    if cfg.resume:
        state = actors.learners.call("load_latest", str(run_dir))[0]
        if state is not None:
            step, cursor = state["step"], state["cursor"]
            actors.sync_weights()  # the engines start from model_path; give them the resumed policy
            print(f"resumed from step {step}")
    monitor = Monitor(cfg.monitor, run_dir, step, save_policy=lambda path: actors.learners.call("save_hf", path))

    def evaluate_held_out() -> dict:
        result = evaluate(actors.rollouts[0], tokenizer, held_out, cfg.eval, tools=cfg.tools)
        return {f"eval/{t}": r["accuracy"] for t, r in result.items() if t != "transcripts"}

    def save_checkpoint() -> None:
        actors.learners.call("save_checkpoint", str(run_dir), step, {"cursor": cursor})

    if step == 0 and cfg.eval_every:
        logger.log(0, evaluate_held_out())
    start = time.time()
    # A run bounded by minutes shows minutes; otherwise steps.
    by_time = cfg.max_minutes > 0
    bar = tqdm(total=cfg.max_minutes if by_time else cfg.steps, initial=0 if by_time else step, desc="grpo",
               unit="min" if by_time else "step", bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} {unit} {postfix}"
               if by_time else None)  # fmt: skip
    reported_errors: set = set()
    saved_at = step
    while step < cfg.steps and not monitor.stop:
        if by_time and time.time() - start > 60 * cfg.max_minutes:
            print(f"stopping after {cfg.max_minutes} minutes of RL (step {step})")
            break
        t_step = time.perf_counter()
        # prompts → rollouts → rewards, refilled while too few groups carry a signal
        groups, cursor, metrics = collect_groups(actors, tokenizer, pool, cursor, cfg, reported_errors)
        metrics.update(step_metrics(groups, cfg.rollout.n), cursor=cursor)
        monitor.keep_if_best(step + 1, groups.judge)  # before the update: the learner holds the sampling policy
        # advantages → the learner's update
        trajectories, metrics["groups_trained"] = build_trajectories(groups, cfg.algo, cfg.rollout)
        metrics["samples_trained"] = len(trajectories)
        if trajectories:
            per_rank = actors.learners.call("train", trajectories, cfg.rollout.temperature)
            metrics.update({k: sum(r[k] for r in per_rank) / len(per_rank) for k in per_rank[0]})
        else:
            print(f"step {step + 1}: every group was dropped (no reward signal); skipping the update")
        step += 1
        metrics.update(monitor.observe(step, monitor_signals(groups, cfg.rollout.n, metrics.get("kl"))))
        # weight sync → the engines sample from the new policy
        metrics["time/sync"] = actors.sync_weights() if trajectories and step % cfg.sync.every == 0 else 0.0
        if cfg.eval_every and step % cfg.eval_every == 0:
            t0 = time.perf_counter()
            metrics.update(evaluate_held_out())
            metrics["time/eval"] = time.perf_counter() - t0
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            t0 = time.perf_counter()
            save_checkpoint()
            saved_at = step
            metrics["time/checkpoint"] = time.perf_counter() - t0
        metrics["time/step"] = time.perf_counter() - t_step
        logger.log(step, metrics)
        bar.update(min(cfg.max_minutes, (time.time() - start) / 60) - bar.n if by_time else 1)
        bar.set_postfix(
            step=step,
            reward=f"{metrics['reward/mean']:.3f}",
            acc=f"{metrics['accuracy']:.3f}",
            kept=metrics["samples_trained"],
            s=f"{metrics['time/step']:.1f}",
        )
    bar.close()
    if saved_at != step:
        save_checkpoint()  # so a run stopped by steps or minutes resumes from exactly here
    actors.learners.call("save_hf", str(run_dir / "model"))
    final = evaluate_held_out()
    logger.log(step, {"final/" + k: v for k, v in final.items()})
    logger.close()
    monitor.finish()
    actors.shutdown()
    return {"steps": step, "eval": final, "wall_s": time.time() - start}


if __name__ == "__main__":
    from rlpost.reward_runner import RewardFunctionBroken

    apply_cache_env()
    try:
        result = train(parse_config(GRPOConfig))
    except ConfigError as error:
        raise SystemExit(f"config error: {error}") from None
    except RewardFunctionBroken as error:  # raised in a reward worker; its message says it all
        raise SystemExit(f"stopped: {getattr(error, 'cause', error)}") from None
    print(f"GRPO finished after {result['steps']} steps; held-out accuracy: {result['eval']}")
