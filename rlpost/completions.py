"""Completions of prompts by a policy on a rollout worker: sampled, decoded, checked by the task's verifier.

The one home of "prompt ids → `RolloutWorker.generate` → text → verifier" that held-out
evaluation (rlpost/evaluate.py), the model comparison (recipes/compare.py) and RLHF candidates
(rlpost/rlhf/candidates.py) share: `sample_completions`, then `score_completions` where answers
are checked. An RL step spreads its prompts over several workers and scores them on reward
workers, so it takes the request alone (`generate_request`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

from rewards import builtin_reward
from rlpost.chat import prompt_ids
from rlpost.tasks import VERIFIERS, Problem
from rlpost.tokenizer import decode_completions, stop_token_ids

if TYPE_CHECKING:  # for annotations only: the rollout module imports torch
    from rlpost.distributed.rollout import Sample

# The verifier of a task that has none registered (a user's problem file): the answer is a number or expression.
DEFAULT_VERIFIER = "math"


@dataclass
class Completion:
    """One sampled answer: the engine's sample (ids, finish reason, tool calls) and its text."""

    sample: Sample
    text: str


def generate_request(
    tokenizer, prompts: list, *, n: int, max_new_tokens: int, temperature: float, top_p: float = 1.0, tools=None
) -> tuple[list[list[int]], dict]:
    """The ids of `prompts` (texts or chat message lists, opened for the assistant's turn) and the
    keyword arguments of `RolloutWorker.generate` that sample `n` completions of each, ending at
    the tokenizer's stop tokens (with the Python tool when `tools` is an enabled ToolConfig)."""
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    kwargs = {
        "n": n,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stop_token_ids": stop_token_ids(tokenizer),
        "tools": tools,
    }
    return ids, kwargs


def sample_completions(
    worker,
    tokenizer,
    prompts: list,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int | None = None,
    tools=None,
    chunk_prompts: int | None = None,
    progress: str | None = None,
) -> list[list[Completion]]:
    """`n` decoded completions of each prompt from a RolloutWorker actor: one list per prompt, in
    prompt order.

    The prompts go in one `generate` call, or in calls of `chunk_prompts` with a progress bar
    named `progress` stepping once per call. With `seed`, prompt i is sampled with seed + i
    however the prompts are split, so chunking never changes an answer."""
    import ray

    ids, kwargs = generate_request(
        tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, tools=tools
    )
    size = chunk_prompts or max(len(ids), 1)
    groups = []
    with tqdm(total=len(ids), desc=progress, unit="problem", disable=progress is None) as bar:
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            chunk_seed = None if seed is None else seed + start
            groups += ray.get(worker.generate.remote(chunk, seed=chunk_seed, **kwargs))
            bar.update(len(chunk))
    texts = iter(decode_completions(tokenizer, [s.token_ids for group in groups for s in group]))
    return [[Completion(s, next(texts)) for s in group] for group in groups]


def score_completions(problems: list[Problem], completions: list[str]) -> list[float]:
    """The verifier's score (1.0 right, 0.0 wrong or unreadable) of each completion for its
    problem: `rlpost.tasks.VERIFIERS` of its task, the math verifier for a task without one.
    One batched call per task."""
    scores = [0.0] * len(problems)
    by_task = defaultdict(list)
    for i, p in enumerate(problems):
        by_task[p.task].append(i)
    for task, idx in by_task.items():
        verifier = builtin_reward(VERIFIERS.get(task, DEFAULT_VERIFIER))
        values = verifier(
            [problems[i].prompt for i in idx], [completions[i] for i in idx], answer=[problems[i].answer for i in idx]
        )
        for i, v in zip(idx, values):
            scores[i] = float(v or 0.0)
    return scores
