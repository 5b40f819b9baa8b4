"""Held-out evaluation through vLLM: accuracy and pass@k per task, answer length, truncation.

Each task's verifier (`rlpost.tasks.VERIFIERS`, a reward of rewards/) scores it here, the same
one that gives an RL step its `accuracy`, so both mean the same thing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rlpost.config import doc
from rlpost.tasks import VERIFIERS, Problem


@dataclass
class EvalConfig:
    problems_per_task: int = doc("Held-out problems per task (at most 1000).", 200)
    samples: int = doc("Samples per problem at `temperature` (sampled pass@1 is their mean accuracy).", 1)
    temperature: float = doc("Sampling temperature; 0 = greedy.", 0.0)
    max_new_tokens: int = doc("Longest answer in tokens.", 256)


def score_completions(problems: list[Problem], completions: list[str]) -> list[float]:
    """Correctness (0/1) of each completion for its problem, by its task's verifier."""
    from rewards import builtin_reward

    scores = [0.0] * len(problems)
    by_task = defaultdict(list)
    for i, p in enumerate(problems):
        by_task[p.task].append(i)
    for task, idx in by_task.items():
        fn = builtin_reward(VERIFIERS[task])
        values = fn(
            [problems[i].prompt for i in idx], [completions[i] for i in idx], answer=[problems[i].answer for i in idx]
        )
        for i, v in zip(idx, values):
            scores[i] = float(v or 0.0)
    return scores


def evaluate(worker, tokenizer, problems: list[Problem], cfg: EvalConfig, tools=None) -> dict:
    """Sample `cfg.samples` answers per problem on a RolloutWorker actor and score them
    (with the Python tool when `tools` is an enabled `rlpost.distributed.tools.ToolConfig`).

    Returns {task: {"accuracy", "pass@k", "mean_tokens", "truncated"}, ..., "transcripts": [...]}
    where accuracy is the mean over all samples (pass@1) and pass@k counts a problem solved if
    any of its k samples is right."""
    import ray

    from rlpost.chat import prompt_ids
    from rlpost.tokenizer import decode_completions, stop_token_ids

    outputs = ray.get(
        worker.generate.remote(
            [prompt_ids(tokenizer, p.prompt) for p in problems],
            n=cfg.samples,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            stop_token_ids=stop_token_ids(tokenizer),
            tools=tools,
        )
    )
    flat_problems = [p for p in problems for _ in range(cfg.samples)]
    flat_samples = [s for group in outputs for s in group]
    texts = decode_completions(tokenizer, [s.token_ids for s in flat_samples])
    scores = score_completions(flat_problems, texts)
    per_task: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for i, (p, s, score) in enumerate(zip(flat_problems, flat_samples, scores)):
        stats = per_task[p.task]
        stats["score"].append(score)
        stats["tokens"].append(len(s.token_ids))
        stats["truncated"].append(s.finish_reason == "length")
        stats["tool_calls"].append(s.tool_calls)
        if i % cfg.samples == cfg.samples - 1:
            stats["solved"].append(max(stats["score"][-cfg.samples :]))
    result = {
        task: {
            "accuracy": _mean(st["score"]),
            f"pass@{cfg.samples}": _mean(st["solved"]),
            "mean_tokens": _mean(st["tokens"]),
            "truncated": _mean(st["truncated"]),
            "tool_calls": _mean(st["tool_calls"]),
            "problems": len(st["solved"]),
        }
        for task, st in per_task.items()
    }
    result["transcripts"] = [
        {"task": p.task, "prompt": p.prompt, "answer": p.answer, "completion": t, "correct": sc}
        for p, t, sc in zip(flat_problems[:: cfg.samples], texts[:: cfg.samples], scores[:: cfg.samples])
    ]
    return result


def _mean(xs) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def format_table(results: dict[str, dict], columns=("accuracy",)) -> str:
    """A small text table: one row per task."""
    rows = [f"{'task':<14}" + "".join(f"{c:>12}" for c in columns)]
    for task, stats in results.items():
        if task == "transcripts":
            continue
        rows.append(f"{task:<14}" + "".join(f"{stats.get(c, float('nan')):>12.3f}" for c in columns))
    return "\n".join(rows)


def evaluate_models(
    model_paths: dict[str, str], problems: list[Problem], configs: dict[str, EvalConfig], vllm_cfg=None
) -> dict[str, dict[str, dict]]:
    """Evaluate several checkpoints of one architecture on the same problems with one engine:
    {model name: {config name: evaluate(...)}}. Weights are swapped in with a sync, not a restart."""
    import ray
    from safetensors.torch import load_file

    from rlpost.distributed.engine import VLLMConfig, start_rollout_workers
    from rlpost.tokenizer import load_tokenizer

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
