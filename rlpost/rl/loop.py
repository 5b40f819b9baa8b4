"""The RL loop that GRPO (recipes/grpo.py) and PPO (recipes/ppo.py) share; they differ only in
how a step's scored samples become an update (`algorithm.update`).

    for each step:
        collect_groups        prompts → rollouts (vLLM) → rewards, refilled while too few groups carry a signal
        algorithm.update      advantages → the learner's (and PPO's critic's) update; returns metrics
        monitor.observe       the reward-hacking monitor reads the step and may end the run
        sync_weights          the engines sample from the new policy
        evaluate / checkpoint every `train.eval_every` / `train.checkpoint_every` steps, and at the end

An `algorithm` has `name`, `critic` (its critic config, or None), `refill_rounds` (GRPO's dynamic
sampling), `update(actors, step_samples, step) -> (metrics, policy_moved)`, and `state()` /
`load_state(state)` for what a checkpoint keeps besides the weights.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

from rlpost.config import check_path, run_command, save_config, to_dict
from rlpost.distributed.cluster import init_ray
from rlpost.distributed.weight_sync import WeightSyncTimeout
from rlpost.evaluate import evaluate
from rlpost.metrics import MetricsLogger
from rlpost.rl.actors import ROLLOUT_RETRIES, RLActors
from rlpost.rl.config import RLConfig
from rlpost.rl.degeneracy import mean_of_finite
from rlpost.rl.monitor import Monitor, judge_name, with_judge
from rlpost.rl.steps import (
    Rollouts,
    collect_groups,
    gather_rollouts,
    monitor_signals,
    problems_at,
    prompt_pool,
    sample_groups,
    score,
    step_metrics,
    submit_rollouts,
)
from rlpost.scoring.runner import RewardFunctionBroken
from rlpost.tasks import VERIFIERS, make_problems
from rlpost.tokenizer import decode_completions, load_tokenizer
from rlpost.trainer import latest_checkpoint


class RunStopped(RuntimeError):
    """An actor was lost or a weight sync timed out: the run stopped and says how to resume it."""


class RLRun:
    """One RL run's state between steps: its actors, data cursor, logger and monitor."""

    def __init__(self, cfg: RLConfig, algorithm, actors: RLActors, tokenizer, pool: list):
        self.cfg, self.algorithm, self.actors, self.tokenizer, self.pool = cfg, algorithm, actors, tokenizer, pool
        self.run_dir = Path(cfg.run_dir)
        self.held_out = [p for t in cfg.data.tasks for p in make_problems(t, "eval", cfg.eval.problems_per_task)]
        self.logger = MetricsLogger(self.run_dir, cfg.logging, algorithm.name, config=to_dict(cfg))
        self.step, self.cursor = 0, 0  # the cursor after the last trained batch (what a checkpoint keeps)
        self.version = 0  # the policy's version: learner updates so far
        self.engine_version = 0  # the version the engines hold (their last sync)
        self.updates_since_sync = 0  # learner updates the engines have not received yet
        self.in_flight: deque[Rollouts] = deque()  # asynchronous RL: batches the engines were given
        self.reported_errors: set = set()  # (reward function, error kind) printed once per run
        if cfg.resume:
            self._resume()
        save_policy = lambda path: actors.learners.call("save_hf", path)  # noqa: E731
        self.monitor = Monitor(cfg.monitor, self.run_dir, self.step, save_policy=save_policy)
        self.keeps_best = cfg.monitor.enabled and cfg.monitor.action == "stop_keep_best"

    def _resume(self) -> None:
        state = self.actors.load_latest(self.run_dir)
        if state is not None:
            self.step, self.cursor, self.version = state["step"], state["cursor"], state.get("version", state["step"])
            self.algorithm.load_state(state)
            self.actors.sync_weights()  # the engines start from model_path; give them the resumed policy
            self.engine_version = self.version
            print(f"resumed from step {self.step}")

    def evaluate_held_out(self) -> dict:
        """Held-out accuracy per task through rollout worker 0, which is restarted and given the
        learner's weights again if it dies meanwhile."""
        from ray.exceptions import RayActorError

        for attempt in range(ROLLOUT_RETRIES + 1):
            try:
                result = evaluate(self.actors.rollouts[0], self.tokenizer, self.held_out, self.cfg.eval,
                                  tools=self.cfg.tools)  # fmt: skip
                return {f"eval/{task}": accuracy for task, accuracy in result.accuracy.items()}
            except RayActorError as error:
                if attempt == ROLLOUT_RETRIES:
                    raise
                print(f"warning: rollout worker 0 died during evaluation ({type(error).__name__}); evaluating again")
                self.actors.resync_rollout(0)

    def judge_held_out(self) -> dict:
        """Keep-best: the judge scores the policy's greedy answers to the same held-out prompts
        every time. Called right after a sync, when the engines that answer hold the learner's
        weights, so the policy the monitor keeps is the one the judge scored."""
        cfg, t0 = self.cfg, time.perf_counter()
        problems = self.held_out[: cfg.monitor.judge_prompts]
        greedy = replace(cfg.rollout, n=1, temperature=0.0)
        _, samples, _ = sample_groups(self.actors, self.tokenizer, problems, greedy, cfg.tools)
        texts = decode_completions(self.tokenizer, [s.token_ids for s in samples])
        num_tokens = [len(s.token_ids) for s in samples]
        _, _, per_function, _, _ = score(self.actors, problems, num_tokens, texts, cfg.rollout.max_new_tokens)
        judged = per_function[judge_name(cfg)]
        self.monitor.keep_if_best(self.step, judged)
        return {"monitor/judge_held_out": mean_of_finite(judged), "time/judge": time.perf_counter() - t0}

    def save_checkpoint(self) -> None:
        # Batches still in flight are not in the cursor: a resumed run samples them again.
        state = {"cursor": self.cursor, "version": self.version, **self.algorithm.state()}
        self.actors.save_checkpoint(self.run_dir, self.step, state)

    def submit_ahead(self) -> Rollouts:
        """Asynchronous RL: the next batch for this step, and the engines given the batches after it,
        up to `async.max_staleness` ahead, to sample while the learner trains."""
        cfg = self.cfg
        while len(self.in_flight) < 1 + cfg.async_.max_staleness:
            start = self.in_flight[-1].cursor if self.in_flight else self.cursor
            problems = problems_at(self.pool, start, cfg.rollout.prompts_per_step, cfg.seed)
            rollouts = submit_rollouts(self.actors, self.tokenizer, problems, cfg.rollout, cfg.tools,
                                       cursor=start + len(problems), version=self.engine_version)  # fmt: skip
            self.in_flight.append(rollouts)
        return self.in_flight.popleft()

    def train_step(self) -> dict:
        """One step: collect scored samples, update, monitor, sync, and the periodic eval/checkpoint."""
        cfg, actors, t_step = self.cfg, self.actors, time.perf_counter()
        submitted = self.submit_ahead() if cfg.async_.max_staleness else None
        step_samples, self.cursor, metrics = collect_groups(actors, self.tokenizer, self.pool, self.cursor, cfg,
                                                            self.reported_errors, self.algorithm.refill_rounds, submitted)  # fmt: skip
        sampled_by = submitted.version if submitted else self.engine_version
        staleness = self.version - sampled_by
        if staleness > max(cfg.async_.max_staleness, cfg.sync.every - 1):  # the schedule makes this impossible
            raise RuntimeError(f"samples of policy version {sampled_by} reached the learner at version {self.version}")
        metrics.update(step_metrics(step_samples, cfg.rollout.n), cursor=self.cursor)
        metrics.update({"staleness/mean": float(staleness), "staleness/max": staleness})
        update_metrics, policy_moved = self.algorithm.update(actors, step_samples, self.step)
        metrics.update(update_metrics)
        self.step += 1
        self.version += int(policy_moved)
        signals = monitor_signals(step_samples, cfg.rollout.n, metrics.get("kl"))
        metrics.update(self.monitor.observe(self.step, signals))
        # Counted in updates, not steps: a step without an update must not postpone a due sync.
        self.updates_since_sync += int(policy_moved)
        if self.in_flight:  # the engines finish the batches they sample before new weights arrive
            t0 = time.perf_counter()
            for rollouts in self.in_flight:
                gather_rollouts(actors, rollouts)
            metrics["time/wait_rollout"] = time.perf_counter() - t0
        metrics["time/sync"] = 0.0
        if self.updates_since_sync >= cfg.sync.every:
            metrics["time/sync"] = actors.sync_weights()
            self.updates_since_sync, self.engine_version = 0, self.version
        if self.keeps_best and self.step % cfg.monitor.judge_every == 0 and self.updates_since_sync == 0:
            metrics.update(self.judge_held_out())
        if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
            t0 = time.perf_counter()
            metrics.update(self.evaluate_held_out())
            metrics["time/eval"] = time.perf_counter() - t0
        if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
            t0 = time.perf_counter()
            self.save_checkpoint()
            metrics["time/checkpoint"] = time.perf_counter() - t0
        metrics["time/step"] = time.perf_counter() - t_step
        self.logger.log(self.step, metrics)
        return metrics

    def train(self) -> dict:
        """Steps until train.steps, train.max_minutes or the monitor stops the run; then the final
        checkpoint, policy (and critic), and held-out evaluation."""
        from tqdm import tqdm

        cfg = self.cfg.train
        if self.step == 0 and (cfg.eval_every or self.keeps_best):
            self.logger.log(0, {**(self.evaluate_held_out() if cfg.eval_every else {}),
                                **(self.judge_held_out() if self.keeps_best else {})})  # fmt: skip
        start = time.time()
        by_time = cfg.max_minutes > 0  # a run bounded by minutes shows minutes; otherwise steps
        saved_at = self.step
        # A context manager: a step that raises (a lost actor) must not leave the bar registered,
        # or every later bar in the process is drawn as a nested one.
        with tqdm(total=cfg.max_minutes if by_time else cfg.steps, initial=0 if by_time else self.step,
                  desc=self.algorithm.name, unit="min" if by_time else "step",
                  bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} {unit} {postfix}" if by_time else None) as bar:  # fmt: skip
            while self.step < cfg.steps and not self.monitor.stop:
                if by_time and time.time() - start > 60 * cfg.max_minutes:
                    print(f"stopping after {cfg.max_minutes} minutes of RL (step {self.step})")
                    break
                metrics = self.train_step()
                if "time/checkpoint" in metrics:
                    saved_at = self.step
                bar.update(min(cfg.max_minutes, (time.time() - start) / 60) - bar.n if by_time else 1)
                bar.set_postfix(step=self.step, reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                                kept=metrics["samples_trained"], s=f"{metrics['time/step']:.1f}")  # fmt: skip
        if saved_at != self.step:
            self.save_checkpoint()  # so a run stopped by steps or minutes resumes from exactly here
        self.actors.learners.call("save_hf", str(self.run_dir / "model"))
        if self.actors.critics is not None:
            self.actors.critics.call("save_hf", str(self.run_dir / "critic_model"))
        final = self.evaluate_held_out()
        self.logger.log(self.step, {"final/" + k: v for k, v in final.items()})
        self.monitor.finish()
        return {"steps": self.step, "eval": final, "wall_s": time.time() - start}


def run(cfg: RLConfig, algorithm) -> dict:
    """Train `cfg` (an RL recipe's config) with `algorithm`; returns steps, final eval and wall time."""
    from ray.exceptions import RayActorError

    check_path("model_path", cfg.model_path)
    if cfg.data.gsm8k:
        check_path("data.gsm8k", cfg.data.gsm8k)
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    tokenizer = load_tokenizer(cfg.model_path)
    pool = prompt_pool(cfg.data)
    init_ray(run_log=run_dir / "actors.log")
    print(f"starting the actors (their output goes to {run_dir / 'actors.log'})")
    verifiers = {t: VERIFIERS[t] for t in {p.task for p in pool}}
    # The monitor's judge, if any, runs in the reward workers as one more reward function of weight 0.
    actors = RLActors(with_judge(cfg), cfg.train.steps, verifiers, critic=algorithm.critic)
    (run_dir / "placement.json").write_text(json.dumps(actors.placement(), indent=1))
    rl_run = None
    # One place for a lost actor: a learner or critic rank takes its DeepSpeed world's state with
    # it (and leaves the other ranks waiting in a collective), so the run stops and --resume
    # continues it from the last checkpoint with the same prompts. Lost rollout and reward
    # workers are restarted and their work redone where they are called.
    try:
        rl_run = RLRun(cfg, algorithm, actors, tokenizer, pool)
        return rl_run.train()
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
        if rl_run is not None:
            rl_run.logger.close()


def rl_command(config_cls, main, name: str) -> None:
    """An RL recipe's command line; a broken reward function and a lost actor end it with one line
    that says what to do, as a bad config does."""
    result = run_command(config_cls, main, {RewardFunctionBroken: "stopped", RunStopped: "stopped"})
    print(f"{name} finished after {result['steps']} steps; held-out accuracy: {result['eval']}")


def _actor_name(actors: RLActors, error) -> str:
    """Which of the run's actors a RayActorError is about, e.g. "learner rank 1"."""
    roles = [
        ("learner rank", actors.learners),
        ("critic rank", actors.critics),
        ("rollout worker", actors.rollouts),
        ("reward worker", actors.reward_workers),
    ]
    for role, group in roles:
        for i, actor in enumerate(group.actors if group is not None else []):
            if actor._actor_id.hex() == error.actor_id:
                return f"{role} {i}"
    return "an actor"
