"""Math reward throughput: checks per second with 1 and 2 RewardWorker actors.

Run from the project root:

    .venv/bin/python bench/reward_throughput.py

Completions are built from every GSM8K train problem in the way a policy writes
them: the worked solution (calculator annotations removed) followed by a final
answer, half of them right and half wrong, in a mix of forms: 70 % "The answer
is N.", 20 % "\\boxed{N}", 10 % a LaTeX fraction "$\\frac{2N}{2}$" (which goes
through math-verify instead of the exact plain-number comparison). The same
completions are scored in this process (the bare function), through a
RewardRunner (child process, no Ray) and through 1 and 2 RewardWorker actors
on a local Ray with 2 CPUs. Writes bench/results/reward_throughput.json.

The machine has 2 cores shared with other work: compare numbers within one run.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from rewards.math import math_reward  # noqa: E402
from rlpost.scoring.references import RewardSpec
from rlpost.scoring.runner import RewardRunner, RewardWorker

GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/train.jsonl.gz"
BATCH_SIZE = 256
IN_FLIGHT_PER_WORKER = 2  # a second batch queued per worker hides the round trip


def build_completions(seed: int = 0) -> tuple[list[str], list[str], list[str], list[float]]:
    """Prompts, completions, gold answers and the expected scores."""
    rng = random.Random(seed)
    with gzip.open(GSM8K_TRAIN, "rt") as lines:
        problems = [json.loads(line) for line in lines]
    prompts, completions, golds, expected = [], [], [], []
    for problem in problems:
        solution, _, number_text = problem["answer"].rpartition("####")
        number = int(number_text.strip().replace(",", ""))
        reasoning = re.sub(r"<<[^>]*>>", "", solution).strip()
        right = rng.random() < 0.5
        said = number if right else number + rng.choice([-2, -1, 1, 3, 10])
        form = rng.random()
        if form < 0.7:
            final = f"The answer is {said}."
        elif form < 0.9:
            final = f"So the answer is \\boxed{{{said}}}."
        else:
            final = f"The answer is $\\frac{{{2 * said}}}{{2}}$."
        prompts.append(problem["question"])
        completions.append(f"{reasoning}\n{final}")
        golds.append(problem["answer"])
        expected.append(1.0 if right else 0.0)
    return prompts, completions, golds, expected


def batches(size: int):
    return [(start, min(start + BATCH_SIZE, size)) for start in range(0, size, BATCH_SIZE)]


def time_in_process(prompts, completions, golds, expected) -> dict:
    started = time.perf_counter()
    scores = []
    for start, end in batches(len(prompts)):
        scores += math_reward(prompts[start:end], completions[start:end], answer=golds[start:end])
    elapsed = time.perf_counter() - started
    assert scores == expected, "in-process scores differ from the expected ones"
    return {"seconds": elapsed, "checks_per_s": len(prompts) / elapsed}


def time_reward_runner(prompts, completions, golds, expected) -> dict:
    with RewardRunner([RewardSpec("math", timeout_s=60.0)]) as runner:
        runner.score(prompts[:8], completions[:8], {"answer": golds[:8]})  # warm up
        started = time.perf_counter()
        scores = []
        for start, end in batches(len(prompts)):
            result = runner.score(prompts[start:end], completions[start:end], {"answer": golds[start:end]})
            scores += result.total
        elapsed = time.perf_counter() - started
    assert scores == expected, "RewardRunner scores differ from the expected ones"
    return {"seconds": elapsed, "checks_per_s": len(prompts) / elapsed}


def time_ray_workers(ray, worker_count, prompts, completions, golds, expected) -> dict:
    worker_class = ray.remote(RewardWorker).options(**RewardWorker.RAY_OPTIONS, num_cpus=1)
    workers = [worker_class.remote([RewardSpec("math", timeout_s=60.0)]) for _ in range(worker_count)]
    ray.get([worker.start.remote() for worker in workers])
    ray.get([worker.score.remote(prompts[:8], completions[:8], {"answer": golds[:8]}) for worker in workers])
    started = time.perf_counter()
    spans = batches(len(prompts))
    scores: list[float | None] = [None] * len(prompts)
    pending = {}
    next_span = 0
    # Keep IN_FLIGHT_PER_WORKER batches queued on every worker until all are scored.
    while next_span < len(spans) or pending:
        while next_span < len(spans) and len(pending) < worker_count * IN_FLIGHT_PER_WORKER:
            start, end = spans[next_span]
            worker = workers[next_span % worker_count]
            reference = worker.score.remote(prompts[start:end], completions[start:end], {"answer": golds[start:end]})
            pending[reference] = (start, end)
            next_span += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        start, end = pending.pop(done[0])
        scores[start:end] = ray.get(done[0]).total
    elapsed = time.perf_counter() - started
    for worker in workers:
        ray.get(worker.close.remote())
        ray.kill(worker)
    assert scores == expected, f"scores with {worker_count} workers differ from the expected ones"
    return {"seconds": elapsed, "checks_per_s": len(prompts) / elapsed}


def main() -> None:
    import ray

    bench_started = time.perf_counter()
    prompts, completions, golds, expected = build_completions()
    print(f"{len(prompts)} GSM8K train completions, batches of {BATCH_SIZE}")
    metrics: dict = {
        "samples": len(prompts),
        "batch_size": BATCH_SIZE,
        "fraction_correct": sum(expected) / len(expected),
        "answer_forms": {"the_answer_is_n": 0.7, "boxed_n": 0.2, "latex_fraction": 0.1},
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": os.getloadavg()[0],
    }
    metrics["in_process"] = time_in_process(prompts, completions, golds, expected)
    print("in process:", metrics["in_process"])
    metrics["reward_runner_1_process"] = time_reward_runner(prompts, completions, golds, expected)
    print("RewardRunner:", metrics["reward_runner_1_process"])

    ray_temp_dir = tempfile.mkdtemp(prefix="rlpost-bench-ray-")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_temp_dir)
    try:
        for worker_count in (1, 2):
            key = f"ray_workers_{worker_count}"
            metrics[key] = time_ray_workers(ray, worker_count, prompts, completions, golds, expected)
            print(f"{worker_count} RewardWorker(s):", metrics[key])
    finally:
        ray.shutdown()
        shutil.rmtree(ray_temp_dir, ignore_errors=True)
    metrics["speedup_2_vs_1_workers"] = (
        metrics["ray_workers_2"]["checks_per_s"] / metrics["ray_workers_1"]["checks_per_s"]
    )
    metrics["load_average_1m_at_end"] = os.getloadavg()[0]

    from rlpost.metrics import write_bench_result

    path = write_bench_result("reward_throughput", metrics, time.perf_counter() - bench_started)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
