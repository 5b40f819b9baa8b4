"""The pieces of one RL step, in the order an RL recipe's loop calls them.

    prompts     problems_at(pool, cursor, ...)        the next practice problems (pure in the cursor)
    rollouts    sample_groups(actors, ...)            n samples per prompt from the vLLM engines
                (submit_rollouts + gather_rollouts;   asynchronous RL submits ahead and gathers later)
    rewards     score(actors, ...)                    reward workers: weighted total, verifier, errors
                collect_groups(...)                   the two above, in refill rounds, merged
    advantages  the recipe's update                   GRPO: recipes/grpo.py (build_trajectories); PPO:
                                                      recipes/ppo.py with rlpost/rl/ppo_steps.py
    update      actors.learners.call("train", ...)    rlpost/rl/learner.py
    sync        actors.sync_weights()                 rlpost/rl/actors.py
    metrics     step_metrics(samples, ...)            computed once from the step's merged samples
    monitor     monitor_signals(samples, ...)         what rlpost/rl/monitor.py reads; the canaries
                                                      and the judge are scored in collect_groups

Their config sections live in rlpost/rl/config.py.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field

import torch

from rlpost.algorithms import zero_variance_groups
from rlpost.completions import generate_request
from rlpost.data import load_gsm8k
from rlpost.distributed.rollout import Sample
from rlpost.rl.actors import ROLLOUT_RETRIES
from rlpost.rl.config import RLConfig, RLData, RolloutConfig
from rlpost.rl.degeneracy import Canary, canary_texts
from rlpost.rl.monitor import StepSignals, judge_name
from rlpost.tasks import Problem, make_problems
from rlpost.tokenizer import decode_completions

# ---------------------------------------------------------------------------------------------
# Prompts


def prompt_pool(data: RLData) -> list[Problem]:
    """Answer-only practice problems: the 'rl' split of each task (never SFT or held-out ones)."""

    pool = [p for task, count in data.tasks.items() for p in make_problems(task, "rl", count)]
    if data.gsm8k:
        pool += load_gsm8k(data.gsm8k, "train")
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


# ---------------------------------------------------------------------------------------------
# Rollouts and rewards


@dataclass
class StepSamples:
    """The sampled groups of one step, flat and group-contiguous: sample i answers problem i // n."""

    problems: list[Problem] = field(default_factory=list)  # one per group
    prompt_ids: list[list[int]] = field(default_factory=list)  # one per group
    samples: list[Sample] = field(default_factory=list)  # n per group
    total_rewards: list[float] = field(default_factory=list)  # weighted total; NaN: no function gave one
    accuracy: list[float | None] = field(default_factory=list)  # the task verifier's score
    per_fn: dict[str, list[float | None]] = field(default_factory=dict)  # each function's raw values
    failures: dict[str, int] = field(default_factory=dict)  # samples each function failed on
    texts: list[str] = field(default_factory=list)  # the decoded samples
    judge: list[float | None] = field(default_factory=list)  # the monitor's judge per sample; empty: none
    canaries: list = field(default_factory=list)  # hacking_monitor.Canary, beside the first groups

    def extend(self, other: StepSamples) -> None:
        self.problems += other.problems
        self.prompt_ids += other.prompt_ids
        self.samples += other.samples
        self.total_rewards += other.total_rewards
        self.accuracy += other.accuracy
        self.texts += other.texts
        self.judge += other.judge
        self.canaries += other.canaries  # only the first round has canaries, so indices still match
        for name, values in other.per_fn.items():
            self.per_fn.setdefault(name, []).extend(values)
        for name, count in other.failures.items():
            self.failures[name] = self.failures.get(name, 0) + count


def _split(items: list, parts: int) -> list[list]:
    size = math.ceil(len(items) / parts)
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


@dataclass
class Rollouts:
    """One batch of problems submitted to the engines: the generate calls, and once gathered, the
    samples. `version` is the policy version (learner updates) the engines held when the calls
    were submitted; an engine runs its calls in order, so a weight sync submitted later never
    reaches them."""

    problems: list[Problem]
    prompt_ids: list[list[int]]
    calls: list[tuple[int, list, object]]  # (rollout worker index, its prompt ids, the generate ref)
    kwargs: dict
    cursor: int = 0  # the data cursor after these problems
    version: int = 0
    gathered: tuple[list[Sample], float] | None = None  # (samples, tool seconds) once awaited


def submit_rollouts(
    actors, tokenizer, problems: list[Problem], cfg: RolloutConfig, tools, cursor: int = 0, version: int = 0
) -> Rollouts:
    """`cfg.n` samples per problem requested from the engines, prompts spread evenly over the
    rollout workers (one `generate` call each, all submitted before any is awaited)."""
    ids, kwargs = generate_request(tokenizer, [p.prompt for p in problems], n=cfg.n, max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, top_p=cfg.top_p, tools=tools)  # fmt: skip
    chunks = [(i, chunk) for i, chunk in enumerate(_split(ids, len(actors.rollouts))) if chunk]
    calls = [(i, chunk, actors.rollouts[i].generate.remote(chunk, **kwargs)) for i, chunk in chunks]
    return Rollouts(problems, ids, calls, kwargs, cursor, version)


def gather_rollouts(actors, rollouts: Rollouts) -> tuple[list[Sample], float]:
    """The samples of `rollouts` (flat, `n` per problem) and the tool wall time of the slowest
    worker; awaited once, then kept.

    A worker that dies meanwhile is restarted by Ray, given the learner's weights and asked for
    the same prompts again, so the batch stays whole and the data cursor does not move."""
    if rollouts.gathered is None:
        parts = [_generate_surviving(actors, i, chunk, ref, rollouts.kwargs) for i, chunk, ref in rollouts.calls]
        samples = [s for part in parts for group in part for s in group]
        tool_s = max(sum(s.tool_s for group in part for s in group) for part in parts)
        rollouts.gathered = samples, tool_s
    return rollouts.gathered


def sample_groups(actors, tokenizer, problems: list[Problem], cfg: RolloutConfig, tools):
    """Prompt ids, `cfg.n` samples per problem (flat), and the tool wall time of the slowest
    worker: `submit_rollouts`, then `gather_rollouts`."""
    rollouts = submit_rollouts(actors, tokenizer, problems, cfg, tools)
    samples, tool_s = gather_rollouts(actors, rollouts)
    return rollouts.prompt_ids, samples, tool_s


def _generate_surviving(actors, index: int, chunk: list, ref, kwargs: dict):
    """Rollout worker `index`'s result for `chunk` (`ref`: its generate call). If the worker
    died, wait for Ray's restart, resync its weights (a restarted engine loads model_path) and
    generate the same chunk with the same arguments again, at most ROLLOUT_RETRIES times; then
    the worker's RayActorError is raised."""
    import ray

    for attempt in range(ROLLOUT_RETRIES + 1):
        try:
            if attempt:
                actors.resync_rollout(index)
                ref = actors.rollouts[index].generate.remote(chunk, **kwargs)
            return ray.get(ref)
        except ray.exceptions.RayActorError as error:  # ActorDiedError, ActorUnavailableError
            if attempt == ROLLOUT_RETRIES:
                # The RL loop turns this into an error that says how to resume.
                print(f"rollout worker {index} died {attempt + 1} times during one step; giving up", flush=True)
                raise
            print(
                f"warning: rollout worker {index} died during generate ({type(error).__name__}); "
                f"waiting for its restart to generate its {len(chunk)} prompts again "
                f"(retry {attempt + 1} of {ROLLOUT_RETRIES})",
                flush=True,
            )


def score(actors, problems: list[Problem], num_tokens: list[int], texts: list[str], max_tokens: int):
    """Reward workers' results for every completion (`texts`, the same number per problem, with
    their lengths in tokens), the batch split evenly over the workers.

    Returns (rewards with NaN where no function gave one, verifier accuracy, per-function values,
    per-function failure counts, the `RewardError`s)."""
    import ray

    n = len(texts) // len(problems)
    flat = [p for p in problems for _ in range(n)]
    columns = {
        "answer": [p.answer for p in flat],
        "task": [p.task for p in flat],
        "num_tokens": list(num_tokens),
        "max_tokens": [max_tokens] * len(flat),
    }
    chunks = _split(list(range(len(flat))), len(actors.reward_workers))
    refs = [
        worker.score.remote(
            [flat[i].prompt for i in idx], [texts[i] for i in idx], {k: [v[i] for i in idx] for k, v in columns.items()}
        )
        for worker, idx in zip(actors.reward_workers.actors, chunks)
        if idx
    ]
    results = ray.get(refs)
    names = list(dict.fromkeys(name for res in results for name in res.per_fn))
    per_fn: dict[str, list] = {name: [] for name in names}
    failures: dict[str, int] = {}
    for res in results:
        for name in names:  # a series one worker's batch lacks (it failed there) is None there
            per_fn[name].extend(res.per_fn.get(name, [None] * len(res.total)))
        for name, count in res.failures.items():  # functions only, not the series they log
            failures[name] = failures.get(name, 0) + count
    rewards = [math.nan if r is None else r for res in results for r in res.total]
    accuracy = [a for res in results for a in res.accuracy]
    return rewards, accuracy, per_fn, failures, [e for res in results for e in res.errors]


def collect_groups(
    actors,
    tokenizer,
    pool: list,
    cursor: int,
    cfg: RLConfig,
    reported: set,
    refill_rounds: int = 0,
    submitted: Rollouts | None = None,
) -> tuple[StepSamples, int, dict]:
    """Sample and score `rollout.prompts_per_step` prompts; with `refill_rounds` (GRPO's dynamic
    sampling), sample that many more prompts per round until enough groups carry a signal.
    Returns the merged samples of every round, the advanced cursor, and the phase timings.

    `submitted` (asynchronous RL) is a batch the engines were given earlier: it is the step's
    samples, and its cursor the step's.

    Reward errors are printed once per (function, kind) over the run (`reported` remembers)."""
    step_samples, timings = StepSamples(), {"time/rollout": 0.0, "time/tool": 0.0, "time/reward": 0.0}
    judge = judge_name(cfg)
    with_signal = 0
    for round_index in range(1 + refill_rounds):
        t0 = time.perf_counter()
        if submitted is None:
            problems = problems_at(pool, cursor, cfg.rollout.prompts_per_step, cfg.seed)
            cursor += len(problems)
            ids, samples, tool_s = sample_groups(actors, tokenizer, problems, cfg.rollout, cfg.tools)
        else:  # time/rollout is then the wait for the engines, not their generation time
            problems, ids, cursor = submitted.problems, submitted.prompt_ids, submitted.cursor
            samples, tool_s = gather_rollouts(actors, submitted)
            tool_s = min(tool_s, time.perf_counter() - t0)
        timings["time/rollout"] += time.perf_counter() - t0 - tool_s
        timings["time/tool"] += tool_s
        t0 = time.perf_counter()
        texts = decode_completions(tokenizer, [s.token_ids for s in samples])
        num_tokens = [len(s.token_ids) for s in samples]
        rewards, accuracy, per_fn, failures, errors = score(
            actors, problems, num_tokens, texts, cfg.rollout.max_new_tokens
        )
        judged = _take_judge(judge, per_fn)
        timings["time/reward"] += time.perf_counter() - t0
        canaries = []
        if round_index == 0 and cfg.monitor.enabled and cfg.monitor.canaries:
            t0 = time.perf_counter()
            canaries, canary_errors = score_canaries(actors, tokenizer, problems, texts, cfg, judge)
            errors += canary_errors
            timings["time/canaries"] = time.perf_counter() - t0
        for error in errors:
            if (error.function, error.kind) not in reported:
                reported.add((error.function, error.kind))
                print(f"reward function failed (first of its kind; counted in reward/<name>/failures): {error}")
        step_samples.extend(
            StepSamples(problems, ids, samples, rewards, accuracy, per_fn, failures, texts, judged, canaries)
        )
        if not refill_rounds:
            break
        with_signal += int((~zero_variance_groups(torch.tensor(rewards), cfg.rollout.n)).sum())
        if with_signal >= cfg.rollout.prompts_per_step:
            break
    return step_samples, cursor, timings


def _take_judge(judge: str | None, per_fn: dict) -> list:
    """Move the monitor's judge out of the per-function values (it is no reward) and return its
    values. It ran at weight 0, so the totals are already those of the reward functions alone."""
    return [] if judge is None else per_fn.pop(judge)


def score_canaries(actors, tokenizer, problems: list[Problem], texts: list[str], cfg, judge: str | None):
    """The monitor's canaries of the first `monitor.canary_prompts` problems (`texts`: the
    samples of every problem, `rollout.n` each), scored by the reward workers like samples: one
    small extra batch per step. Returns the canaries with their rewards, and the `RewardError`s."""

    n, problems = cfg.rollout.n, problems[: cfg.monitor.canary_prompts]
    canaries = [
        Canary(g, kind, text)
        for g, p in enumerate(problems)
        for kind, text in canary_texts(_prompt_text(p.prompt), texts[g * n : (g + 1) * n]).items()
    ]
    canary_text = [c.text for c in canaries]
    num_tokens = [len(ids) for ids in tokenizer(canary_text, add_special_tokens=False)["input_ids"]]
    rewards, _, per_fn, _, errors = score(actors, problems, num_tokens, canary_text, cfg.rollout.max_new_tokens)
    _take_judge(judge, per_fn)
    for canary, reward in zip(canaries, rewards):
        canary.reward = reward
    return canaries, errors


def _prompt_text(prompt) -> str:
    """A prompt as text: itself, or the last user turn of a chat prompt."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


# ---------------------------------------------------------------------------------------------
# Metrics


def _mean(values: list) -> float:
    given = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(given) / len(given) if given else math.nan


def step_metrics(step_samples: StepSamples, n: int) -> dict:
    """What the step's samples say, computed once from every round's samples together."""

    rewards = torch.tensor(step_samples.total_rewards, dtype=torch.float32)
    given = rewards[~torch.isnan(rewards)]
    lengths = torch.tensor([len(s.token_ids) for s in step_samples.samples], dtype=torch.float32)
    calls = torch.tensor([float(s.tool_calls) for s in step_samples.samples])
    metrics = {
        "accuracy": _mean(step_samples.accuracy),
        "reward/mean": float(given.mean()) if len(given) else math.nan,
        "reward/std": float(given.std(correction=0)) if len(given) else math.nan,
        "groups_sampled": len(step_samples.problems),
        "response_len/mean": float(lengths.mean()),
        "response_len/max": int(lengths.max()),
        "truncated_frac": _mean([float(s.finish_reason == "length") for s in step_samples.samples]),
        "tool/calls_per_sample": float(calls.mean()),
        "tool/samples_with_call_frac": float((calls > 0).float().mean()),
    }
    if n > 1:  # groups whose rewards all agree carry no signal for a group baseline
        metrics["groups_dropped_frac"] = float(zero_variance_groups(rewards, n).float().mean())
    for name, values in step_samples.per_fn.items():
        metrics[f"reward/{name}"] = _mean(values)
        if name in step_samples.failures:
            metrics[f"reward/{name}/failures"] = step_samples.failures[name]
    return metrics


def monitor_signals(step_samples: StepSamples, n: int, kl: float | None):
    """What the reward-hacking monitor reads from the step (`kl`: the learner's estimate, if any)."""

    return StepSignals(
        texts=step_samples.texts,
        prompts=[_prompt_text(p.prompt) for p in step_samples.problems],
        rewards=step_samples.total_rewards,
        num_tokens=[len(s.token_ids) for s in step_samples.samples],
        truncated=[s.finish_reason == "length" for s in step_samples.samples],
        group_size=n,
        canaries=step_samples.canaries,
        judge=step_samples.judge,
        kl=kl,
    )
