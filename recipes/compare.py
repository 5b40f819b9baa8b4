"""Compare models side by side: a thinking (RL) model, an SFT model, a chat model, on the same problems.

    python recipes/compare.py --config recipes/configs/compare_tiny.yaml
    ray job submit --working-dir . -- python recipes/compare.py --config recipes/configs/compare_tiny.yaml \
        --models "{sft: $PWD/runs/sft_tiny/model, grpo: $PWD/runs/grpo_tiny/model}" --run_dir $PWD/runs/compare_tiny

Every model (a named HF folder with its own tokenizer and chat template) answers the same
held-out problems through a vLLM rollout worker on Ray, with one sampling setting for all:
one greedy answer and `sampling.samples` sampled ones per problem (prompt i seeded seed + i),
then the greedy answer cut at each token budget and made to answer ("The answer is", after
closing an open <think> block: s1's budget forcing). Each task's verifier scores every answer.

Per model and task (rlpost/compare/stats.py): greedy accuracy; pass@1 with a 95 % interval;
unbiased pass@k and maj@k for k = 1, 2, 4 … n; lengths of right and wrong answers (thinking and
answer tokens apart for <think> models); truncation; reflection phrases per 1,000 tokens; tool
calls per answer; accuracy against the token budget. Per pair of models: solved by both / only
A / only B / neither, McNemar's exact test and its mid-p on the greedy answers, a paired bootstrap on pass@1.

Writes <run_dir>/records.jsonl (every answer), results.json, and the report
(rlpost/compare/report.py: report.md, report.html, PNG plots). Each (model, task, setting) is
cached in <run_dir>/cache, so adding a model does not re-run the others.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rewards.answers import clean_answer, extract_final_answer
from rlpost.chat import prompt_ids
from rlpost.compare.report import write_report
from rlpost.compare.stats import maj_at_k, mcnemar, mean_ci95, paired_bootstrap, pass_at_k_curve
from rlpost.completions import sample_completions, score_completions
from rlpost.config import ConfigError, check_path, doc, run_command, save_config, section
from rlpost.data import load_gsm8k, read_jsonl
from rlpost.distributed.cluster import init_ray
from rlpost.distributed.engine import VLLMConfig, start_rollout_workers
from rlpost.distributed.tools import ToolConfig
from rlpost.tasks import Problem, make_problems
from rlpost.tokenizer import decode_completions, load_tokenizer

# Prompts per engine call: each call is a step of the progress bar.
CHUNK_PROMPTS = 100
REFLECTION_PHRASES = ["wait", "let me check", "let me verify", "double-check", "double check", "re-check", "hmm"]


@dataclass
class CompareData:
    tasks: dict[str, int] = doc(
        "Held-out problems per synthetic task (rlpost/tasks.py, at most 1000).", {"arithmetic": 200}
    )
    gsm8k: str = doc(
        "GSM8K source (local .jsonl[.gz] file or folder, or hub name) for its test split; '' for none.", ""
    )
    gsm8k_problems: int = doc("GSM8K test problems to use (the first N).", 100)
    files: list[str] = doc("User JSONL files of {prompt, answer} (a task named after the file; math verifier).", [])


@dataclass
class SamplingConfig:
    samples: int = doc("Sampled answers per problem (n of pass@k and maj@k).", 8)
    temperature: float = doc("Sampling temperature of the sampled answers (the greedy one is extra).", 1.0)
    top_p: float = doc("Nucleus sampling threshold.", 1.0)
    max_new_tokens: int = doc("Longest answer in tokens.", 256)
    budgets: list[int] = doc(
        "Token budgets of the budget-forcing cut (the greedy answer cut at each).", [16, 32, 64, 128]
    )
    answer_prefix: str = doc("Text appended after a cut to force an answer.", "\nThe answer is")

    def validate(self):
        if self.samples < 1 or self.max_new_tokens < 1:
            raise ConfigError("sampling.samples and sampling.max_new_tokens: must be at least 1")


@dataclass
class CompareConfig:
    models: dict[str, str] = doc("Name → HF folder of every model to compare (the report keeps this order).", {})
    run_dir: str = doc("Output folder (records, results, report, cache).", "runs/compare_tiny")
    seed: int = doc("Seed of prompt i is seed + i, the same for every model.", 0)
    data: CompareData = section(CompareData)
    sampling: SamplingConfig = section(SamplingConfig)
    reflection_phrases: list[str] = field(default_factory=lambda: list(REFLECTION_PHRASES))
    tools: ToolConfig = section(ToolConfig)
    vllm: VLLMConfig = field(default_factory=lambda: VLLMConfig(max_model_len=2048))

    def validate(self):
        if len(self.models) < 1:
            raise ConfigError("models: name at least one model (name: path)")


# ---------------------------------------------------------------------------------------------
# Problems and answers


def load_problems(data: CompareData) -> dict[str, list]:
    """Task → its held-out problems."""
    problems = {task: make_problems(task, "eval", count) for task, count in data.tasks.items()}
    if data.gsm8k:
        problems["gsm8k"] = load_gsm8k(data.gsm8k, "test")[: data.gsm8k_problems]
    for path in data.files:
        task = Path(path).stem
        problems[task] = []
        for lineno, record in read_jsonl(path):
            if not isinstance(record, dict) or not {"prompt", "answer"} <= record.keys():
                raise ConfigError(f"data.files: {path}:{lineno}: expected fields 'prompt' and 'answer'")
            problems[task].append(Problem(task, record["prompt"], "", str(record["answer"])))
    return problems


def extracted_answer(text: str) -> str | None:
    """The final answer as maj@k votes on it (rewards.answers' extraction and cleaning)."""
    raw = extract_final_answer(text)
    return clean_answer(raw) if raw is not None else None


def thinking_split(text: str) -> tuple[str, str] | None:
    """(thinking, answer) of a <think>…</think> completion; None when it has no think block."""
    match = re.search(r"<think>(.*?)(</think>|$)(.*)", text, flags=re.S)
    return (match.group(1), match.group(3)) if match else None


def reflections(text: str, phrases: list[str]) -> int:
    """Occurrences of the reflection phrases (whole words, any case)."""
    lowered = text.lower()
    return sum(len(re.findall(rf"\b{re.escape(p.lower())}\b", lowered)) for p in phrases)


# ---------------------------------------------------------------------------------------------
# Sampling one model (cached per model, task and setting)


def setting_key(path: str, task: str, count: int, cfg: CompareConfig) -> str:
    """What a cached answer file depends on: the model's weights file, the problems, the setting."""
    weights = sorted(Path(path).glob("*.safetensors"))
    stamp = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights] or [path]
    spec = json.dumps(
        [str(Path(path).resolve()), stamp, task, count, asdict(cfg.sampling), cfg.seed, asdict(cfg.tools)]
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def answer_problems(worker, tokenizer, task: str, problems: list, cfg: CompareConfig) -> list[dict]:
    """Records of the greedy answer, the sampled answers and the budget-forced answers of a
    model to one task's problems."""
    s, prompts = cfg.sampling, [p.prompt for p in problems]
    common = {"max_new_tokens": s.max_new_tokens, "seed": cfg.seed, "tools": cfg.tools, "chunk_prompts": CHUNK_PROMPTS}
    greedy = sample_completions(worker, tokenizer, prompts, n=1, temperature=0.0, progress=f"{task}, greedy",
                                **common)  # fmt: skip
    sampled = sample_completions(worker, tokenizer, prompts, n=s.samples, temperature=s.temperature, top_p=s.top_p,
                                 progress=f"{task}, {s.samples} samples", **common)  # fmt: skip
    records = []
    for sample_name, groups in (("greedy", greedy), ("sampled", sampled)):
        flat = [(i, j, c) for i, group in enumerate(groups) for j, c in enumerate(group)]
        scores = score_completions([problems[i] for i, _, _ in flat], [c.text for _, _, c in flat])
        for (i, j, c), score in zip(flat, scores):
            ok = bool(score)
            records.append({
                "task": task, "problem": i, "prompt": problems[i].prompt, "answer": problems[i].answer,
                "sample": "greedy" if sample_name == "greedy" else j, "completion": c.text,
                "tokens": len(c.sample.token_ids), "truncated": c.sample.finish_reason == "length",
                "tool_calls": c.sample.tool_calls, "reward": float(ok), "correct": ok,
            })  # fmt: skip
    greedy_correct = [r["correct"] for r in records if r["sample"] == "greedy"]  # in problem order
    records += budget_forced(worker, tokenizer, task, problems, [g[0].sample for g in greedy], greedy_correct, cfg)
    return records


def budget_forced(worker, tokenizer, task, problems, greedy, greedy_correct, cfg: CompareConfig) -> list[dict]:
    """The greedy answer cut at each budget B and made to answer: its first B tokens, then
    `answer_prefix` (after "</think>" when a think block is still open), then up to 16 greedy
    tokens. An answer within the budget keeps its own result. One record per (problem, budget)."""
    import ray

    s = cfg.sampling
    records = []
    for budget in s.budgets:
        cut = [i for i, g in enumerate(greedy) if len(g.token_ids) > budget]
        heads = decode_completions(tokenizer, [greedy[i].token_ids[:budget] for i in cut])
        forced = [("\n</think>" if "<think>" in h and "</think>" not in h else "") + s.answer_prefix for h in heads]
        prompts = [prompt_ids(tokenizer, problems[i].prompt) + greedy[i].token_ids[:budget]
                   + tokenizer.encode(f, add_special_tokens=False) for i, f in zip(cut, forced)]  # fmt: skip
        tails = ray.get(worker.generate.remote(prompts, n=1, max_new_tokens=16, temperature=0.0)) if prompts else []
        endings = decode_completions(tokenizer, [t[0].token_ids for t in tails])
        texts = [h + f + e for h, f, e in zip(heads, forced, endings)]
        correct = dict(zip(cut, map(bool, score_completions([problems[i] for i in cut], texts))))
        for i, g in enumerate(greedy):
            records.append({"task": task, "problem": i, "sample": f"budget:{budget}", "budget": budget,
                            "tokens": min(len(g.token_ids), budget), "cut": i in correct,
                            "correct": correct.get(i, greedy_correct[i])})  # fmt: skip
    return records


def model_records(name: str, path: str, problems: dict[str, list], cfg: CompareConfig) -> list[dict]:
    """Every record of one model, from the cache or from a rollout worker started on it."""
    cache = Path(cfg.run_dir) / "cache" / name
    files = {task: cache / f"{task}-{setting_key(path, task, len(ps), cfg)}.jsonl" for task, ps in problems.items()}
    missing = [task for task, f in files.items() if not f.exists()]
    if missing:
        print(f"{name}: answering {', '.join(missing)} with {path}", flush=True)
        worker = start_rollout_workers(path, cfg.vllm, seed=cfg.seed)[0]
        tokenizer = load_tokenizer(path)
        try:
            for task in missing:
                records = answer_problems(worker, tokenizer, task, problems[task], cfg)
                cache.mkdir(parents=True, exist_ok=True)
                tmp = files[task].with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
                tmp.replace(files[task])  # a crash never leaves a partial cache file
        finally:
            import ray

            ray.kill(worker)
    else:
        print(f"{name}: every task cached in {cache}")
    return [{"model": name, **json.loads(line)} for f in files.values() for line in f.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# What the records say


def summarize(records: list[dict], cfg: CompareConfig) -> dict:
    """One model's metrics on one task from its records (see the module docstring)."""
    from statistics import fmean

    n = cfg.sampling.samples
    greedy = {r["problem"]: r for r in records if r["sample"] == "greedy"}
    problems = sorted(greedy)
    sampled = {i: [] for i in problems}
    for r in records:
        if isinstance(r["sample"], int):
            sampled[r["problem"]].append(r)
    for group in sampled.values():
        group.sort(key=lambda r: r["sample"])
    every = [r for group in sampled.values() for r in group]
    counts = [sum(r["correct"] for r in sampled[i]) for i in problems]
    votes = [[(extracted_answer(r["completion"]), r["correct"]) for r in sampled[i]] for i in problems]
    pass_at = pass_at_k_curve(counts, n)
    tokens = sum(r["tokens"] for r in every)
    out = {
        "problems": len(problems),
        "greedy_accuracy": fmean(greedy[i]["correct"] for i in problems),
        "pass@1": mean_ci95([c / n for c in counts]),
        "pass@k": {str(k): v for k, v in pass_at.items()},
        "maj@k": {str(k): maj_at_k(votes, k) for k in pass_at},
        "lengths": {kind: [r["tokens"] for r in every if r["correct"] == (kind == "correct")] for kind in ("correct", "wrong")},
        "truncated_frac": fmean(r["truncated"] for r in every),
        "reflection_per_1k_tokens": 1000 * sum(reflections(r["completion"], cfg.reflection_phrases) for r in every) / max(tokens, 1),
        "tool_calls_per_answer": fmean(r["tool_calls"] for r in every),
        "budget_accuracy": {
            str(b): fmean(bool(r["correct"]) for r in records if r.get("budget") == b) for b in cfg.sampling.budgets
        },
    }  # fmt: skip
    out["mean_tokens"] = {kind: fmean(v) if v else None for kind, v in out["lengths"].items()}
    split = [thinking_split(r["completion"]) for r in every]
    if any(split):
        # Characters, not tokens: the think block and the answer after it, for models that think first.
        out["thinking_chars_mean"] = fmean(len(t) for t, _ in filter(None, split))
        out["answer_chars_mean"] = fmean(len(a) for _, a in filter(None, split))
    return out


def compare_pair(a: list[dict], b: list[dict], n: int) -> dict:
    """Two models' records on one task: the 2x2 table of greedy correctness with McNemar's
    exact test, and a paired bootstrap on per-problem pass@1."""

    def per_problem(records):
        greedy = {r["problem"]: bool(r["correct"]) for r in records if r["sample"] == "greedy"}
        passed = {i: 0 for i in greedy}
        for r in records:
            if isinstance(r["sample"], int):
                passed[r["problem"]] += r["correct"]
        return greedy, passed

    (greedy_a, passed_a), (greedy_b, passed_b) = per_problem(a), per_problem(b)
    problems = sorted(greedy_a)
    table = mcnemar([greedy_a[i] for i in problems], [greedy_b[i] for i in problems])
    return {
        **{k: table[k] for k in ("both", "only_a", "only_b", "neither")},
        "mcnemar_p": table["p_value"],
        "mcnemar_mid_p": table["mid_p"],
        "pass1_diff": paired_bootstrap([passed_a[i] / n for i in problems], [passed_b[i] / n for i in problems]),
    }


def main(cfg: CompareConfig) -> dict:
    """Answer, measure, compare and report; returns results.json's content."""
    from itertools import combinations

    for name, path in cfg.models.items():
        check_path(f"models.{name}", path)
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    problems = load_problems(cfg.data)
    init_ray(run_log=run_dir / "actors.log")
    records = [r for name, path in cfg.models.items() for r in model_records(name, path, problems, cfg)]
    by = {}
    for r in records:
        by.setdefault((r["model"], r["task"]), []).append(r)
    results = {
        "models": list(cfg.models),
        "tasks": list(problems),
        "setting": asdict(cfg.sampling),
        "per_model": {m: {t: summarize(by[m, t], cfg) for t in problems} for m in cfg.models},
        "pairs": [
            {"a": a, "b": b, "task": t, **compare_pair(by[a, t], by[b, t], cfg.sampling.samples)}
            for a, b in combinations(cfg.models, 2)
            for t in problems
        ],
    }
    (run_dir / "records.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records if not str(r["sample"]).startswith("budget"))
    )
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(run_dir)
    for task in results["tasks"]:
        row = ", ".join(f"{m} {results['per_model'][m][task]['greedy_accuracy']:.1%}" for m in results["models"])
        print(f"{task} greedy accuracy: {row}")
    print(f"report: {run_dir / 'report.html'}")
    return results


if __name__ == "__main__":
    run_command(CompareConfig, main)
