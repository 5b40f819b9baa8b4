"""Held-out evaluation through vLLM: accuracy and pass@k per task, answer length, truncation.

Each task's verifier (`rlpost.tasks.VERIFIERS`, a reward of rewards/) scores it here, the same
one that gives an RL step its `accuracy`, so both mean the same thing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rlpost.completions import Completion, sample_completions, score_completions
from rlpost.config import doc
from rlpost.distributed.engine import VLLMConfig, start_rollout_workers
from rlpost.tasks import Problem
from rlpost.tokenizer import load_tokenizer


@dataclass
class EvalConfig:
    problems_per_task: int = doc("Held-out problems per task (at most 1000).", 200)
    samples: int = doc("Samples per problem at `temperature` (sampled pass@1 is their mean accuracy).", 1)
    temperature: float = doc("Sampling temperature; 0 = greedy.", 0.0)
    max_new_tokens: int = doc("Longest answer in tokens.", 256)


@dataclass
class EvalResult:
    """One evaluation of a model on held-out problems.

    `per_task[task]` holds "accuracy" (mean over every sample: pass@1), "pass@k" (k = the samples
    per problem: a problem counts as solved if any of its k samples is right), "mean_tokens",
    "truncated" and "tool_calls" (means per sample) and "problems". `transcripts` has the first
    sample of every problem: {"task", "prompt", "answer", "completion", "correct"}."""

    per_task: dict[str, dict[str, float]]
    transcripts: list[dict]

    @property
    def accuracy(self) -> dict[str, float]:
        """Task → accuracy (pass@1)."""
        return {task: stats["accuracy"] for task, stats in self.per_task.items()}

    def to_json(self) -> dict:
        """The form saved in eval.json: each task's statistics under its name, then "transcripts"."""
        return {**self.per_task, "transcripts": self.transcripts}

    @classmethod
    def from_json(cls, saved: dict) -> EvalResult:
        """The result `to_json` saved."""
        return cls({task: stats for task, stats in saved.items() if task != "transcripts"}, saved["transcripts"])


def evaluate(worker, tokenizer, problems: list[Problem], cfg: EvalConfig, tools=None) -> EvalResult:
    """Sample `cfg.samples` answers per problem on a RolloutWorker actor and score them
    (with the Python tool when `tools` is an enabled `rlpost.distributed.tools.ToolConfig`)."""
    groups = sample_completions(
        worker,
        tokenizer,
        [p.prompt for p in problems],
        n=cfg.samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        tools=tools,
    )
    return eval_result(problems, groups)


def eval_result(problems: list[Problem], groups: list[list[Completion]]) -> EvalResult:
    """The statistics of `groups` (the same number of completions for each problem, in order),
    each completion scored by its task's verifier."""
    samples = len(groups[0]) if groups else 1
    flat = [(p, c) for p, group in zip(problems, groups) for c in group]
    scores = score_completions([p for p, _ in flat], [c.text for _, c in flat])
    per_task: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for i, ((p, c), score) in enumerate(zip(flat, scores)):
        stats = per_task[p.task]
        stats["score"].append(score)
        stats["tokens"].append(len(c.sample.token_ids))
        stats["truncated"].append(c.sample.finish_reason == "length")
        stats["tool_calls"].append(c.sample.tool_calls)
        if i % samples == samples - 1:
            stats["solved"].append(max(stats["score"][-samples:]))
    summary = {
        task: {
            "accuracy": _mean(st["score"]),
            f"pass@{samples}": _mean(st["solved"]),
            "mean_tokens": _mean(st["tokens"]),
            "truncated": _mean(st["truncated"]),
            "tool_calls": _mean(st["tool_calls"]),
            "problems": len(st["solved"]),
        }
        for task, st in per_task.items()
    }
    transcripts = [
        {"task": p.task, "prompt": p.prompt, "answer": p.answer, "completion": c.text, "correct": score}
        for (p, c), score in zip(flat[::samples], scores[::samples])
    ]
    return EvalResult(summary, transcripts)


def _mean(xs) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def format_table(result: EvalResult, columns=("accuracy",)) -> str:
    """A small text table: one row per task."""
    rows = [f"{'task':<14}" + "".join(f"{c:>12}" for c in columns)]
    for task, stats in result.per_task.items():
        rows.append(f"{task:<14}" + "".join(f"{stats.get(c, float('nan')):>12.3f}" for c in columns))
    return "\n".join(rows)


def evaluate_models(
    model_paths: dict[str, str], problems: list[Problem], configs: dict[str, EvalConfig], vllm_cfg=None
) -> dict[str, dict[str, EvalResult]]:
    """Evaluate several checkpoints of one architecture on the same problems with one engine:
    {model name: {config name: evaluate(...)}}. Weights are swapped in with a sync, not a restart."""
    import ray
    from safetensors.torch import load_file

    first = next(iter(model_paths.values()))
    worker = start_rollout_workers(first, vllm_cfg or VLLMConfig(num_workers=1))[0]
    tokenizer = load_tokenizer(first)
    results = {}
    try:
        for name, path in model_paths.items():
            state = load_file(f"{path}/model.safetensors")
            if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
                state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied embeddings
            ray.get(worker.update_weights.remote(state))
            results[name] = {mode: evaluate(worker, tokenizer, problems, cfg) for mode, cfg in configs.items()}
    finally:
        ray.kill(worker)
    return results
