"""Sandbox latency: per-snippet p50/p95 and snippets/s with a pool of 1 and 2 workers.

Run from the project root:

    .venv/bin/python bench/sandbox_latency.py

Each snippet is a small program (`print(sum(range(100)))` and two similar ones) run with
full isolation of the strongest tier found here (bwrap + Landlock + seccomp + rlimits when
available). With 1 worker the snippets are sent one after another; with 2 workers they go
through `run_batch`. Latency is the caller's wall time per `run` (send, fork, harden, run,
collect, clean up, answer). Writes bench/results/sandbox.json.

The machine has 2 cores shared with other work: compare numbers within one run.
"""

import os
import statistics
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from sandbox import SandboxPool  # noqa: E402

SNIPPETS = 300
WARMUP = 20
PROGRAMS = {  # program: expected stdout
    "print(sum(range(100)))": "4950\n",
    "import math\nprint(math.factorial(12))": "479001600\n",
    "xs = [i * i for i in range(50)]\nprint(max(xs))": "2401\n",
}
CODES = list(PROGRAMS)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(latencies_s, wall_s):
    return {
        "snippets": len(latencies_s),
        "p50_ms": 1000 * percentile(latencies_s, 0.50),
        "p95_ms": 1000 * percentile(latencies_s, 0.95),
        "mean_ms": 1000 * statistics.fmean(latencies_s),
        "snippets_per_s": len(latencies_s) / wall_s,
    }


def check(codes, results):
    bad = [r for code, r in zip(codes, results) if r.reason != "ok" or r.stdout != PROGRAMS[code]]
    if bad:
        raise SystemExit(f"{len(bad)} snippets went wrong, e.g. {bad[0]}")


def bench_one_worker():
    start = time.monotonic()
    with SandboxPool(num_workers=1) as pool:
        start_s = time.monotonic() - start
        for i in range(WARMUP):
            pool.run(CODES[i % len(CODES)])
        codes = [CODES[i % len(CODES)] for i in range(SNIPPETS)]
        t0 = time.monotonic()
        results = [pool.run(code) for code in codes]
        wall = time.monotonic() - t0
        check(codes, results)
        hello = pool._workers[0].handshake
        isolation = {
            "tier": pool.tier,
            "python": hello.get("python"),
            "landlock_abi": hello.get("landlock_abi"),
            "seccomp": hello.get("seccomp"),
            "memory_cgroup": pool._workers[0].cgroup is not None,
        }
    return {"pool_start_s": start_s, **summarize([r.duration_s for r in results], wall)}, isolation


def bench_two_workers():
    start = time.monotonic()
    with SandboxPool(num_workers=2) as pool:
        start_s = time.monotonic() - start
        pool.run_batch([CODES[i % len(CODES)] for i in range(WARMUP)])
        codes = [CODES[i % len(CODES)] for i in range(SNIPPETS)]
        t0 = time.monotonic()
        results = pool.run_batch(codes)
        wall = time.monotonic() - t0
        check(codes, results)
    return {"pool_start_s": start_s, **summarize([r.duration_s for r in results], wall)}


def main():
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    one, isolation = bench_one_worker()
    two = bench_two_workers()
    metrics = {
        **isolation,
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": load_start,
        "workers_1": one,
        "workers_2": two,
        "speedup_2_vs_1_workers": two["snippets_per_s"] / one["snippets_per_s"],
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    from rlpost.metrics import write_bench_result

    path = write_bench_result(
        "sandbox", metrics, time.monotonic() - started, command=".venv/bin/python bench/sandbox_latency.py"
    )
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
