"""The RL loop that GRPO (recipes/grpo.py) and PPO (recipes/ppo.py) share; they differ only in
how a step's scored samples become an update (`algorithm.update`).

    for each step:
        collect_groups        prompts → rollouts (vLLM) → rewards, refilled while too few groups carry a signal
        algorithm.update      advantages → the learner's (and PPO's critic's) update; returns metrics
        monitor.observe       the reward-hacking monitor reads the step and may end the run
        sync_weights          the engines sample from the new policy
        evaluate / checkpoint every `eval_every` / `checkpoint_every` steps, and at the end

An `algorithm` has `name`, `update(actors, groups, step) -> (metrics, policy_moved)`, and
`state()` / `load_state(state)` for what a checkpoint keeps besides the weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class RunStopped(RuntimeError):
    """An actor was lost or a weight sync timed out: the run stopped and says how to resume it."""


def run(cfg, algorithm) -> dict:
    """Train `cfg` (an RL recipe's config) with `algorithm`; returns steps, final eval and wall time."""
    from ray.exceptions import RayActorError
    from tqdm import tqdm

    from rlpost.config import check_path, save_config, to_dict
    from rlpost.distributed.cluster import init_ray
    from rlpost.distributed.weight_sync import WeightSyncTimeout
    from rlpost.evaluate import evaluate
    from rlpost.metrics import MetricsLogger
    from rlpost.rl.actors import RLActors
    from rlpost.rl.monitor import Monitor, with_judge
    from rlpost.rl.steps import collect_groups, monitor_signals, prompt_pool, step_metrics
    from rlpost.tasks import VERIFIERS, make_problems
    from rlpost.tokenizer import load_tokenizer
    from rlpost.trainer import latest_checkpoint

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
    (run_dir / "placement.json").write_text(json.dumps(actors.placement(), indent=1))
    logger = MetricsLogger(run_dir, cfg.logging, algorithm.name, config=to_dict(cfg))
    # One place for a lost actor: a learner or critic rank takes its DeepSpeed world's state with
    # it (and leaves the other ranks waiting in a collective), so the run stops and --resume
    # continues it from the last checkpoint with the same prompts. Lost rollout and reward
    # workers are restarted and their work redone where they are called.
    try:
        step, cursor = 0, 0
        if cfg.resume:
            state = actors.load_latest(run_dir)
            if state is not None:
                step, cursor = state["step"], state["cursor"]
                algorithm.load_state(state)
                actors.sync_weights()  # the engines start from model_path; give them the resumed policy
                print(f"resumed from step {step}")
        monitor = Monitor(cfg.monitor, run_dir, step, save_policy=lambda path: actors.learners.call("save_hf", path))

        def evaluate_held_out() -> dict:
            result = evaluate(actors.rollouts[0], tokenizer, held_out, cfg.eval, tools=cfg.tools)
            return {f"eval/{t}": r["accuracy"] for t, r in result.items() if t != "transcripts"}

        def save_checkpoint() -> None:
            actors.save_checkpoint(run_dir, step, {"cursor": cursor, **algorithm.state()})

        if step == 0 and cfg.eval_every:
            logger.log(0, evaluate_held_out())
        start = time.time()
        # A run bounded by minutes shows minutes; otherwise steps.
        by_time = cfg.max_minutes > 0
        bar = tqdm(total=cfg.max_minutes if by_time else cfg.steps, initial=0 if by_time else step, desc=algorithm.name,
                   unit="min" if by_time else "step", bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} {unit} {postfix}"
                   if by_time else None)  # fmt: skip
        reported_errors: set = set()
        saved_at = step
        while step < cfg.steps and not monitor.stop:
            if by_time and time.time() - start > 60 * cfg.max_minutes:
                print(f"stopping after {cfg.max_minutes} minutes of RL (step {step})")
                break
            t_step = time.perf_counter()
            groups, cursor, metrics = collect_groups(actors, tokenizer, pool, cursor, cfg, reported_errors)
            metrics.update(step_metrics(groups, cfg.rollout.n), cursor=cursor)
            monitor.keep_if_best(step + 1, groups.judge)  # before the update: the learner holds the sampling policy
            update_metrics, policy_moved = algorithm.update(actors, groups, step)
            metrics.update(update_metrics)
            step += 1
            metrics.update(monitor.observe(step, monitor_signals(groups, cfg.rollout.n, metrics.get("kl"))))
            metrics["time/sync"] = actors.sync_weights() if policy_moved and step % cfg.sync.every == 0 else 0.0
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
        if actors.critics is not None:
            actors.critics.call("save_hf", str(run_dir / "critic_model"))
        final = evaluate_held_out()
        logger.log(step, {"final/" + k: v for k, v in final.items()})
        monitor.finish()
        return {"steps": step, "eval": final, "wall_s": time.time() - start}
    except (RayActorError, WeightSyncTimeout) as error:
        what = (
            f"{_actor_name(actors, error)} died ({type(error).__name__})" if isinstance(error, RayActorError) else error
        )
        checkpoint = latest_checkpoint(run_dir)
        raise RunStopped(
            f"{what}, so the run stopped; rerun with --resume (the same config and --run_dir {run_dir}) to "
            "continue from "
            + (f"its last checkpoint, {checkpoint}" if checkpoint else "the start (no checkpoint was written yet)")
        ) from error
    finally:  # on any error too: engines blocked in a broadcast would otherwise outlive the run
        actors.shutdown()
        logger.close()


def main(config_cls, train, name: str) -> None:
    """An RL recipe's command line: the config from YAML and flags, the run, and the errors a user
    acts on (a bad config, a broken reward function, a lost actor) as one line, not a traceback."""
    from rlpost.cache import apply_cache_env
    from rlpost.config import ConfigError, parse_config
    from rlpost.scoring.runner import RewardFunctionBroken

    apply_cache_env()
    try:
        result = train(parse_config(config_cls))
    except ConfigError as error:
        raise SystemExit(f"config error: {error}") from None
    except RewardFunctionBroken as error:  # raised in a reward worker; its message says it all
        raise SystemExit(f"stopped: {getattr(error, 'cause', error)}") from None
    except RunStopped as error:
        raise SystemExit(f"stopped: {error}") from None
    print(f"{name} finished after {result['steps']} steps; held-out accuracy: {result['eval']}")


def _actor_name(actors, error) -> str:
    """Which of the run's actors a RayActorError is about, e.g. "learner rank 1"."""
    roles = [
        ("learner rank", actors.learners),
        ("critic rank", actors.critics),
        ("rollout worker", actors.rollouts),
        ("reward worker", actors.rewards),
    ]
    for role, group in roles:
        for i, actor in enumerate(group.actors if group is not None else []):
            if actor._actor_id.hex() == error.actor_id:
                return f"{role} {i}"
    return "an actor"
