"""The RL driver: GRPO-family training over Ray actors, readable top to bottom in `train`.

One step:
    prompts ──▶ RolloutWorker × R (vLLM) ──▶ RewardWorker × W ──▶ advantages (pure functions)
        ──▶ Learner ranks (DeepSpeed) ──▶ weight sync to every RolloutWorker ──▶ metrics
with a held-out evaluation every `eval_every` steps and an atomic checkpoint every
`checkpoint_every` steps (`--resume` continues from the latest one).

Actors are placed with one placement group; on a small CPU box they time-share the cores
phase by phase (rollout, reward, train), on a cluster the same bundles spread over nodes.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.cluster import VLLMConfig
from rlpost.config import ConfigError, doc, section
from rlpost.evaluate import EvalConfig
from rlpost.learner import PolicyLossConfig, Trajectory
from rlpost.metrics import LoggingConfig
from rlpost.rewarding import RewardSpec
from rlpost.tools import ToolConfig
from rlpost.trainer import EngineConfig, OptimConfig


@dataclass
class RLData:
    tasks: list[str] = doc(
        "Synthetic tasks whose answer-only practice problems (the 'rl' split) are the prompts.", ["arithmetic"]
    )
    problems: int = doc("Practice problems drawn per task (the pool is cycled in shuffled epochs).", 20000)
    gsm8k: str = doc("Optional GSM8K source (local .jsonl[.gz] file/folder or hub name) added to the prompt pool.", "")


@dataclass
class RolloutConfig:
    n: int = doc("Samples per prompt (the GRPO group size).", 8)
    prompts_per_step: int = doc("Prompts per step (each sampled n times).", 32)
    max_new_tokens: int = doc("Longest completion in tokens.", 128)
    temperature: float = doc("Sampling temperature.", 1.0)
    top_p: float = doc("Nucleus sampling threshold.", 1.0)


@dataclass
class AlgoConfig:
    advantage: str = doc(
        "'grpo' (group mean/std), 'drgrpo' (group mean only, Liu et al. 2025) or 'rloo' (leave-one-out).", "grpo"
    )
    drop_zero_variance_groups: bool = doc(
        "Dynamic sampling (DAPO): drop groups whose rewards all agree (no signal).", True
    )
    refill_rounds: int = doc(
        "Extra sampling rounds to refill dropped groups up to prompts_per_step (0: train on fewer).", 0
    )
    overlong: str = doc(
        "Truncated samples: 'none', 'mask' (excluded from the loss) or 'penalty' (DAPO soft penalty).", "none"
    )
    overlong_buffer: int = doc("Soft penalty ramps over the last N tokens before max_new_tokens.", 32)
    overlong_penalty: float = doc("Largest soft overlong penalty.", 1.0)

    def validate(self):
        from rlpost.algorithms import ADVANTAGE_ESTIMATORS

        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ConfigError(f"algo.advantage: {self.advantage!r} is not one of {sorted(ADVANTAGE_ESTIMATORS)}")
        if self.overlong not in ("none", "mask", "penalty"):
            raise ConfigError(f"algo.overlong: {self.overlong!r} is not one of ['none', 'mask', 'penalty']")


@dataclass
class SyncConfig:
    backend: str = doc(
        "Weight sync learner → rollout workers: 'object_store' (Ray) or 'collective' (gloo/NCCL broadcast).",
        "object_store",
    )
    every: int = doc("Sync after every N learner updates.", 1)

    def validate(self):
        if self.backend not in ("object_store", "collective"):
            raise ConfigError(f"sync.backend: {self.backend!r} is not one of ['object_store', 'collective']")


@dataclass
class RewardsConfig:
    functions: list[RewardSpec] = field(default_factory=lambda: [RewardSpec(name="math")])
    num_workers: int = doc("Reward worker actors.", 1)
    default_reward: float | None = doc(
        "Reward of a sample no function scored (None: excluded from the advantage).", None
    )


@dataclass
class PlacementConfig:
    strategy: str = doc("Placement group strategy: 'PACK' (one box, time-shared) or 'SPREAD' (across nodes).", "PACK")
    learner_cpus: float = doc("CPUs per learner rank bundle.", 1.0)
    learner_gpus: float = doc("GPUs per learner rank bundle.", 0.0)
    reward_cpus: float = doc("CPUs per reward worker bundle.", 0.5)


@dataclass
class RLConfig:
    model_path: str = doc("Policy to start from: an HF folder (e.g. the SFT model).", "runs/sft_tiny/model")
    run_dir: str = doc("Output folder of this run.", "runs/grpo_tiny")
    resume: bool = doc("Continue from the latest checkpoint in run_dir.", False)
    seed: int = doc("Seed of prompt order and sampling.", 0)
    steps: int = doc("RL steps (each: rollouts, rewards, update, sync).", 100)
    max_minutes: float = doc("Stop after this many minutes of RL (0: no limit); the step count still bounds it.", 0.0)
    eval_every: int = doc("Held-out evaluation every N steps (0: only at the end).", 25)
    checkpoint_every: int = doc("Checkpoint every N steps.", 25)
    data: RLData = section(RLData)
    rollout: RolloutConfig = section(RolloutConfig)
    vllm: VLLMConfig = field(default_factory=lambda: VLLMConfig(num_cpus=0.5))
    algo: AlgoConfig = section(AlgoConfig)
    loss: PolicyLossConfig = section(PolicyLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, grad_clip=1.0))
    engine: EngineConfig = section(EngineConfig)
    sync: SyncConfig = section(SyncConfig)
    rewards: RewardsConfig = section(RewardsConfig)
    tools: ToolConfig = section(ToolConfig)
    placement: PlacementConfig = section(PlacementConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(problems_per_task=200))
    logging: LoggingConfig = section(LoggingConfig)


# ---------------------------------------------------------------------------------------------
# Actors


class Actors:
    """The run's actors: learner ranks, rollout workers and reward workers in one placement group."""

    def __init__(self, cfg: RLConfig, total_steps: int):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rlpost.cache import cache_env
        from rlpost.learner import Learner
        from rlpost.rewarding import make_reward_worker_actor
        from rlpost.rollout import RolloutWorker
        from rlpost.weight_sync import free_port

        p, v = cfg.placement, cfg.vllm
        learner_bundle = {"CPU": p.learner_cpus, **({"GPU": p.learner_gpus} if p.learner_gpus else {})}
        rollout_bundle = {"CPU": v.num_cpus, **({"GPU": v.num_gpus} if v.num_gpus else {})}
        bundles = (
            [learner_bundle] * cfg.engine.world_size
            + [rollout_bundle] * v.num_workers
            + [{"CPU": p.reward_cpus}] * cfg.rewards.num_workers
        )
        self.pg = placement_group(bundles, strategy=p.strategy)
        ray.get(self.pg.ready(), timeout=600)

        def at(i):
            return PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=i)

        env = cache_env()
        master_port = free_port()
        master_addr = ray.util.get_node_ip_address()
        learner_cls = ray.remote(Learner)
        self.learners = [
            learner_cls.options(
                num_cpus=p.learner_cpus,
                num_gpus=p.learner_gpus,
                scheduling_strategy=at(r),
                runtime_env={"env_vars": env},
            ).remote(
                cfg.model_path,
                cfg.optim,
                cfg.engine,
                cfg.loss,
                rank=r,
                master_addr=master_addr,
                master_port=master_port,
                total_steps=total_steps,
                seed=cfg.seed,
            )
            for r in range(cfg.engine.world_size)
        ]
        rollout_cls = ray.remote(RolloutWorker)
        base = cfg.engine.world_size
        self.rollouts = [
            rollout_cls.options(
                num_cpus=v.num_cpus,
                num_gpus=v.num_gpus,
                scheduling_strategy=at(base + i),
                runtime_env={"env_vars": v.actor_env()},
            ).remote(
                cfg.model_path,
                dtype=v.dtype,
                max_model_len=v.max_model_len,
                seed=cfg.seed + i,
                enforce_eager=v.enforce_eager,
                kv_cache_gib=v.kv_cache_gib,
            )
            for i in range(v.num_workers)
        ]
        base += v.num_workers
        reward_cls = make_reward_worker_actor()
        self.rewards = [
            reward_cls.options(
                num_cpus=p.reward_cpus, scheduling_strategy=at(base + i), runtime_env={"env_vars": env}
            ).remote(cfg.rewards.functions, cfg.rewards.default_reward)
            for i in range(cfg.rewards.num_workers)
        ]
        ray.get([w.ready.remote() for w in self.rollouts] + [w.names.remote() for w in self.rewards])
        self.sync_backend = cfg.sync.backend
        if self.sync_backend == "collective":
            port, world = free_port(), len(self.rollouts) + 1
            backend = "nccl" if v.num_gpus else "gloo"
            refs = [
                w.init_weight_group.remote(master_addr, port, i + 1, world, backend)
                for i, w in enumerate(self.rollouts)
            ]
            refs += [lr.init_weight_group.remote(master_addr, port, world, backend) for lr in self.learners]
            ray.get(refs)

    def sync_weights(self) -> float:
        """Push the learner's current weights into every rollout engine; returns seconds."""
        import ray

        t0 = time.perf_counter()
        if self.sync_backend == "object_store":
            states = ray.get([lr.state_dict.remote() for lr in self.learners])
            state_ref = ray.put(states[0])
            ray.get([w.update_weights.remote(state_ref) for w in self.rollouts])
        else:
            specs = ray.get([lr.weight_specs.remote() for lr in self.learners])[0]
            refs = [w.receive_weights.remote(specs) for w in self.rollouts]
            ray.get([lr.broadcast_weights.remote() for lr in self.learners] + refs)
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.rollouts + self.learners + self.rewards:
            ray.kill(actor)
        remove_placement_group(self.pg)


# ---------------------------------------------------------------------------------------------
# The pieces of a step


def prompt_pool(cfg: RLData):
    """Answer-only practice problems: the 'rl' split of each task (never SFT or held-out ones)."""
    from rlpost.data import load_gsm8k
    from rlpost.tasks import make_problems

    pool = [p for task in cfg.tasks for p in make_problems(task, "rl", cfg.problems, seed=0)]
    if cfg.gsm8k:
        pool += load_gsm8k(cfg.gsm8k, "train")
    return pool


def problems_at(pool: list, cursor: int, count: int, seed: int) -> list:
    """Problems cursor .. cursor+count of the pool cycled in epochs shuffled by (seed, epoch):
    a pure function of the cursor, so a resumed run continues with the same prompts."""
    out = []
    for k in range(cursor, cursor + count):
        epoch, i = divmod(k, len(pool))
        out.append(pool[_epoch_order(len(pool), seed, epoch)[i]])
    return out


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return random.Random(f"{seed}/{epoch}").sample(range(n), n)


def _split(items: list, parts: int) -> list[list]:
    size = math.ceil(len(items) / parts)
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def rollout(actors: Actors, tokenizer, problems: list, cfg: RolloutConfig, tools: ToolConfig):
    """Prompt ids, n samples per problem, and the tool wall time of the slowest worker; prompts
    spread evenly over the rollout workers (one `generate` call each)."""
    import ray

    from rlpost.chat import prompt_ids
    from rlpost.tokenizer import stop_token_ids

    ids = [prompt_ids(tokenizer, p.prompt) for p in problems]
    chunks = _split(ids, len(actors.rollouts))
    refs = [
        w.generate.remote(
            chunk,
            n=cfg.n,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            stop_token_ids=stop_token_ids(tokenizer),
            tools=tools,
        )
        for w, chunk in zip(actors.rollouts, chunks)
        if chunk
    ]
    parts = ray.get(refs)
    tool_s = max(sum(s.tool_s for g in part for s in g) for part in parts)
    return ids, [g for part in parts for g in part], tool_s


def score(actors: Actors, problems: list, texts: list[str], n: int, num_tokens: list[int], max_tokens: int):
    """Rewards for every sample (NaN where no function gave one) and the merged reward metrics."""
    import ray

    flat = [p for p in problems for _ in range(n)]
    columns = {
        "answer": [p.answer for p in flat],
        "task": [p.task for p in flat],
        "num_tokens": num_tokens,
        "max_tokens": [max_tokens] * len(flat),
    }
    index_chunks = _split(list(range(len(flat))), len(actors.rewards))
    refs = [
        w.score.remote(
            [flat[i].prompt for i in idx], [texts[i] for i in idx], {k: [v[i] for i in idx] for k, v in columns.items()}
        )
        for w, idx in zip(actors.rewards, index_chunks)
        if idx
    ]
    results = ray.get(refs)
    rewards = [math.nan if r is None else r for res in results for r in res.total]
    per_fn: dict[str, list] = {}
    for res in results:
        for name, values in res.per_fn.items():
            per_fn.setdefault(name, []).extend(values)
    metrics = {"time/reward_fn_max": max(r.duration_s for r in results)}
    for name, values in per_fn.items():
        given = [v for v in values if v is not None]
        metrics[f"reward/{name}"] = sum(given) / len(given) if given else math.nan
        metrics[f"reward/{name}/failures"] = sum(r.failures.get(name, 0) for r in results)
    for res in results:
        for err in res.errors:
            print(f"reward error: {err}")
    return rewards, per_fn, metrics


def build_trajectories(prompt_ids: list[list[int]], groups: list[list], rewards: list[float], cfg: RLConfig):
    """Advantages per sample, then the trajectories the learner trains on and step statistics.

    Samples without a reward, groups with no signal (dynamic sampling) and, with
    overlong='mask', truncated samples are left out of the loss."""
    import torch

    from rlpost.algorithms import ADVANTAGE_ESTIMATORS, overlong_penalty, truncation_mask, zero_variance_groups

    n, algo = cfg.rollout.n, cfg.algo
    samples = [s for g in groups for s in g]
    r = torch.tensor(rewards, dtype=torch.float32)
    lengths = torch.tensor([len(s.token_ids) for s in samples])
    truncated = truncation_mask([s.finish_reason for s in samples])
    if algo.overlong == "penalty":
        r = r + overlong_penalty(lengths, cfg.rollout.max_new_tokens, algo.overlong_buffer, algo.overlong_penalty)
    advantages = ADVANTAGE_ESTIMATORS[algo.advantage](r, n)
    keep = ~torch.isnan(r)
    dropped_groups = zero_variance_groups(r, n)
    if algo.drop_zero_variance_groups:
        keep &= ~dropped_groups.repeat_interleave(n)
    if algo.overlong == "mask":
        keep &= ~truncated
    trajectories = [
        Trajectory(
            prompt_ids[i // n], s.token_ids, s.logprobs, s.loss_mask or [1] * len(s.token_ids), float(advantages[i])
        )
        for i, s in enumerate(samples)
        if keep[i]
    ]
    calls = torch.tensor([float(s.tool_calls) for s in samples])
    stats = {
        "groups_dropped_frac": float(dropped_groups.float().mean()),
        "samples_kept": int(keep.sum()),
        "response_len/mean": float(lengths.float().mean()),
        "response_len/max": int(lengths.max()),
        "truncated_frac": float(truncated.float().mean()),
        "tool/calls_per_sample": float(calls.mean()),
        "tool/samples_with_call_frac": float((calls > 0).float().mean()),
    }
    return trajectories, stats


def _mean_over_ranks(results: list[dict]) -> dict:
    return {k: sum(r[k] for r in results) / len(results) for k in results[0]}


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: RLConfig) -> dict:
    import ray
    from tqdm import tqdm

    from rlpost.cluster import init_ray
    from rlpost.config import save_config, to_dict
    from rlpost.evaluate import evaluate
    from rlpost.metrics import MetricsLogger
    from rlpost.rewarding import load_reward_fn
    from rlpost.tasks import make_problems
    from rlpost.tokenizer import load_tokenizer

    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    for spec in cfg.rewards.functions:  # a bad reference fails here, before any actor starts
        load_reward_fn(spec.name, spec.kwargs)
    tokenizer = load_tokenizer(cfg.model_path)
    pool = prompt_pool(cfg.data)
    held_out = [p for task in cfg.data.tasks for p in make_problems(task, "eval", cfg.eval.problems_per_task)]

    init_ray()
    actors = Actors(cfg, total_steps=cfg.steps)
    logger = MetricsLogger(run_dir, cfg.logging, "rl", config=to_dict(cfg))
    step, cursor = 0, 0
    if cfg.resume:
        states = ray.get([lr.load_latest.remote(str(run_dir)) for lr in actors.learners])
        if states[0] is not None:
            step, cursor = states[0]["step"], states[0]["cursor"]
            actors.sync_weights()  # the engines start from model_path; give them the resumed policy
            print(f"resumed from step {step}")

    def run_eval() -> dict:
        result = evaluate(actors.rollouts[0], tokenizer, held_out, cfg.eval, tools=cfg.tools)
        return {f"eval/{t}": r["accuracy"] for t, r in result.items() if t != "transcripts"}

    start = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc="rl")
    if step == 0 and cfg.eval_every:
        logger.log(0, run_eval())

    def save_checkpoint() -> None:
        ray.get([lr.save_checkpoint.remote(str(run_dir), step, {"cursor": cursor}) for lr in actors.learners])

    while step < cfg.steps:
        if cfg.max_minutes and time.time() - start > 60 * cfg.max_minutes:
            print(f"stopping after {cfg.max_minutes} minutes of RL (step {step})")
            if step % cfg.checkpoint_every:
                save_checkpoint()  # so the run can be resumed from exactly here
            break
        metrics: dict = {}
        t_step = time.perf_counter()
        trajectories, stats_rounds, reward_rows, acc_rows = [], [], [], []
        t_rollout = t_reward = t_tool = 0.0
        for _round in range(1 + cfg.algo.refill_rounds):
            problems = problems_at(pool, cursor, cfg.rollout.prompts_per_step, cfg.seed)
            cursor += len(problems)
            t0 = time.perf_counter()
            ids, groups, tool_s = rollout(actors, tokenizer, problems, cfg.rollout, cfg.tools)
            t_rollout += time.perf_counter() - t0 - tool_s
            t_tool += tool_s
            t0 = time.perf_counter()
            samples = [s for g in groups for s in g]
            texts = tokenizer.batch_decode([s.token_ids for s in samples], skip_special_tokens=True)
            rewards, per_fn, reward_metrics = score(
                actors, problems, texts, cfg.rollout.n, [len(s.token_ids) for s in samples], cfg.rollout.max_new_tokens
            )
            t_reward += time.perf_counter() - t0
            new, stats = build_trajectories(ids, groups, rewards, cfg)
            trajectories += new
            stats_rounds.append(stats)
            reward_rows += [r for r in rewards if not math.isnan(r)]
            first = next(iter(per_fn.values()))
            acc_rows += [float(v or 0.0) for v in first]
            metrics.update(reward_metrics)
            if len(trajectories) >= cfg.rollout.prompts_per_step * cfg.rollout.n * 0.999:
                break
        metrics.update(stats_rounds[0])
        metrics["cursor"] = cursor
        metrics["refill_rounds_used"] = len(stats_rounds) - 1
        metrics["reward/mean"] = sum(reward_rows) / max(1, len(reward_rows))
        metrics["reward/std"] = (
            sum((r - metrics["reward/mean"]) ** 2 for r in reward_rows) / max(1, len(reward_rows))
        ) ** 0.5
        metrics["accuracy"] = sum(acc_rows) / max(1, len(acc_rows))
        metrics["time/rollout"], metrics["time/reward"] = t_rollout, t_reward
        if cfg.tools.enabled:
            metrics["time/tool"] = t_tool

        if trajectories:
            learner_metrics = _mean_over_ranks(
                ray.get([lr.train.remote(trajectories, cfg.rollout.temperature) for lr in actors.learners])
            )
            metrics.update(learner_metrics)
        else:
            print(f"step {step + 1}: every group was dropped (no reward signal); skipping the update")
        step += 1
        metrics["time/sync"] = actors.sync_weights() if trajectories and step % cfg.sync.every == 0 else 0.0
        if cfg.eval_every and step % cfg.eval_every == 0:
            t0 = time.perf_counter()
            metrics.update(run_eval())
            metrics["time/eval"] = time.perf_counter() - t0
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            t0 = time.perf_counter()
            save_checkpoint()
            metrics["time/checkpoint"] = time.perf_counter() - t0
        metrics["time/step"] = time.perf_counter() - t_step
        logger.log(step, metrics)
        bar.update(1)
        bar.set_postfix(
            reward=f"{metrics['reward/mean']:.3f}",
            acc=f"{metrics['accuracy']:.3f}",
            kept=metrics["samples_kept"],
            s=f"{metrics['time/step']:.1f}",
        )
    bar.close()
    ray.get([lr.save_hf.remote(str(run_dir / "model")) for lr in actors.learners])
    final = run_eval() if cfg.eval_every else {}
    logger.log(step, {"final/" + k: v for k, v in final.items()})
    logger.close()
    actors.shutdown()
    return {"steps": step, "eval": final, "wall_s": time.time() - start}
