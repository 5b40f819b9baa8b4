"""Candidates to rank: K responses per prompt sampled from a policy through a vLLM rollout worker.

`sample_candidates` writes them to a JSONL file of {"id", "prompt", "responses", "answer"?} lines
and reads that file back instead of sampling again, so the ranking page (`recipes/label.py`) shows
the same responses after a restart, and a benchmark can rank the same samples with the
simulated labeler.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from rlpost.completions import sample_completions
from rlpost.data import read_jsonl
from rlpost.distributed.cluster import init_ray
from rlpost.distributed.engine import VLLMConfig, start_rollout_workers
from rlpost.rlhf.rankings import ranking_from_record
from rlpost.tasks import make_problems
from rlpost.tokenizer import load_tokenizer


def candidates_path_for(out: str | Path) -> Path:
    """runs/x/rankings.jsonl → runs/x/rankings.candidates.jsonl"""
    out = Path(out)
    return out.with_name((out.stem if out.suffix == ".jsonl" else out.name) + ".candidates.jsonl")


def load_prompts(spec: dict[str, int] | str) -> list[dict]:
    """[{"prompt", "answer"?}] from a {task: count} spec (RL split) or a JSONL file."""
    if isinstance(spec, dict):
        return [
            {"prompt": p.prompt, "answer": p.answer} for task, n in spec.items() for p in make_problems(task, "rl", n)
        ]
    items = []
    for lineno, record in read_jsonl(spec):
        if not isinstance(record, dict) or "prompt" not in record:
            raise ValueError(f"{spec}:{lineno}: expected an object with a 'prompt'")
        ranking_from_record({"prompt": record["prompt"], "unrankable": True}, f"{spec}:{lineno}")  # checks the prompt
        items.append({"prompt": record["prompt"], **({"answer": str(record["answer"])} if "answer" in record else {})})
    return items


def sample_candidates(
    model_path: str,
    prompts: list,
    k: int,
    candidates_path: str | Path,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 160,
    seed: int = 0,
    vllm: VLLMConfig | None = None,
    retries: int = 2,
) -> list[dict]:
    """K responses per prompt from `model_path`, saved to (and, when it exists, read back from)
    `candidates_path` as {"id", "prompt", "responses", "answer"?} lines.

    `prompts` are strings, chat message lists, or {"prompt", "answer"?} dicts. All prompts go to
    one rollout worker in one engine call; a prompt with empty responses gets up to `retries`
    more calls (all such prompts together), and is left out if it still has fewer than k.
    Uses the running Ray if there is one, else starts one for this call and stops it after."""
    path = Path(candidates_path)
    if path.exists():
        return read_candidates(path)
    import ray

    items = [p if isinstance(p, dict) else {"prompt": p} for p in prompts]
    tokenizer = load_tokenizer(model_path)
    responses: list[list[str]] = [[] for _ in items]
    started_ray = not ray.is_initialized()
    init_ray(run_log=path.parent / "actors.log")  # engine start-up output stays off the console
    workers = start_rollout_workers(model_path, replace(vllm or VLLMConfig(), num_workers=1), seed=seed)
    try:
        for round_ in range(retries + 1):
            short = [i for i, r in enumerate(responses) if len(r) < k]
            if not short:
                break
            groups = sample_completions(
                workers[0],
                tokenizer,
                [items[i]["prompt"] for i in short],
                n=k,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed + 100_003 * round_,
            )
            for i, group in zip(short, groups):
                texts = [c.text.strip() for c in group]
                responses[i] += [t for t in texts if t][: k - len(responses[i])]
    finally:
        workers.kill()
        if started_ray:  # a Ray started here for sampling alone would idle on while the page is served
            ray.shutdown()
    records = [
        {"id": i, "prompt": item["prompt"], "responses": r, **({"answer": item["answer"]} if "answer" in item else {})}
        for i, (item, r) in enumerate(zip(items, responses))
        if len(r) == k
    ]
    if len(records) < len(items):
        print(f"label: {len(items) - len(records)} prompt(s) left out: fewer than {k} non-empty responses")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(partial, path)  # a crash mid-write must not leave a file a restart would trust
    return records


def read_candidates(path: str | Path) -> list[dict]:
    """The records of a candidates file; a bad prompt or response fails naming file and line."""
    records, ids = [], set()
    for lineno, r in read_jsonl(path):
        if not isinstance(r, dict) or "id" not in r or r["id"] in ids:
            raise ValueError(f"{path}:{lineno}: expected an object with a unique 'id'")
        responses = r.get("responses")
        # Validated as a ranking in the shown order: the same checks the rankings file will get.
        order = list(range(len(responses))) if isinstance(responses, list) else []
        ranking_from_record({"prompt": r.get("prompt"), "responses": responses, "order": order}, f"{path}:{lineno}")
        ids.add(r["id"])
        records.append(r)
    return records
