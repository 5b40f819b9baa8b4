"""Tests for sandbox/: normal behaviour on every tier that works here (the attack battery is in
test_sandbox_attacks.py)."""

import logging
import os
import platform
import re
import signal
import threading
import time
import uuid

import pytest

import sandbox
from sandbox import SandboxPool, SandboxUnavailable, seccomp_filter
from sandbox.pool import CGROUP_HEADROOM_MB
from sandbox.worker_process import process_tree

pytestmark = pytest.mark.timeout(120)


def start_pool(tier, **kwargs):
    try:
        return SandboxPool(2, tier=tier, timeout_s=5, **kwargs)
    except SandboxUnavailable as exc:
        pytest.skip(f"tier {tier} unavailable here: {exc}")


@pytest.fixture(scope="module", params=["bwrap", "landlock-seccomp"])
def pool(request):
    p = start_pool(request.param)
    yield p
    p.close()


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def pool_processes(pool):
    """Every process belonging to the pool: worker trees and the workers' sessions."""
    pids = set()
    for root in pool.worker_pids():
        pids.update(process_tree(root))
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if int(stat_fields(name)[3]) == root:
                        pids.add(int(name))
                except (OSError, IndexError):
                    pass
    return pids


def assert_healthy(pool):
    result = pool.run("print(1+1)")
    assert result.stdout == "2\n", result
    assert result.reason == "ok"


def test_tier_is_reported(pool):
    assert pool.tier in ("bwrap", "landlock-seccomp", "rlimits")
    result = pool.run("print('hi')")
    assert result.tier == pool.tier


def test_stdout_stderr_and_exit_code(pool):
    result = pool.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert result.reason == "error" and not result.timed_out and not result.truncated


def test_uncaught_exception_gives_traceback(pool):
    result = pool.run("def f():\n    raise ValueError('boom')\nf()")
    assert result.exit_code == 1
    assert 'File "<string>", line 2, in f' in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: boom")
    assert "sandbox_worker" not in result.stderr


def test_exit_and_quit_builtins(pool):
    assert pool.run("print('a')\nexit(4)").exit_code == 4
    assert pool.run("quit()").reason == "ok"


def test_snippets_do_not_share_random_state(pool):
    outputs = {pool.run("import random\nprint(random.random())").stdout for _ in range(3)}
    assert len(outputs) == 3


def test_multiprocessing_pickles_snippet_functions(pool):
    if pool.tier != "bwrap":
        pytest.skip("multiprocessing locks need the private /dev/shm of the bwrap tier")
    code = (
        "import multiprocessing as mp\n"
        "def square(x):\n"
        "    return x * x\n"
        "with mp.get_context('fork').Pool(2) as p:\n"
        "    print(p.map(square, [1, 2, 3]))\n"
    )
    assert pool.run(code).stdout == "[1, 4, 9]\n"


def test_stdin(pool):
    result = pool.run("import sys\nprint(sys.stdin.read().upper())", stdin="hello\n")
    assert result.stdout == "HELLO\n\n"


def test_timeout(pool):
    start = time.monotonic()
    result = pool.run("while True:\n    pass", timeout_s=0.5)
    assert result.timed_out and result.reason == "timeout" and result.exit_code == -signal.SIGKILL
    assert time.monotonic() - start < 3


def test_output_truncated(pool):
    result = pool.run("print('x' * 100000)", max_output_bytes=1000)
    assert result.truncated and result.reason == "output_limit"
    assert result.stdout == "x" * 1000


def test_runs_as_unprivileged_user_with_clean_environment(pool):
    result = pool.run("import os, json\nprint(json.dumps([os.getuid(), os.getgid(), dict(os.environ)]))")
    uid, gid, env = __import__("json").loads(result.stdout)
    assert uid != 0 and gid != 0
    if os.geteuid() == 0:
        assert uid == 65534
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR"}


def test_scratch_is_writable_and_cleared_between_snippets(pool):
    marker = f"note-{uuid.uuid4().hex}"
    results = [pool.run(f"open('{marker}', 'w').write('x')\nimport os\nprint(os.listdir('.'))") for _ in range(4)]
    assert all(r.stdout == f"['{marker}']\n" for r in results), results


def test_batch_runs_concurrently_and_in_order(pool):
    codes = [f"import time\ntime.sleep(0.4)\nprint({i})" for i in range(4)]
    start = time.monotonic()
    results = pool.run_batch(codes)
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
    assert elapsed < 1.5, f"4 x 0.4 s on 2 workers took {elapsed:.2f} s"


def test_batch_with_one_stdin_per_snippet(pool):
    results = pool.run_batch(["print(input() * 2)"] * 3, stdin=["a", "b", "c"])
    assert [r.stdout for r in results] == ["aa\n", "bb\n", "cc\n"]


def test_module_level_run():
    result = sandbox.run("print(1+1)")
    assert result.stdout == "2\n" and result.reason == "ok"
    assert sandbox.detect_tier() == result.tier


def test_worker_restarts_after_crash(monkeypatch):
    monkeypatch.setenv("RLPOST_TEST_SECRET", "do-not-leak")
    with SandboxPool(1) as p:
        assert_healthy(p)
        (pid,) = p.worker_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait until it is really dead (a zombie)
            try:
                if stat_fields(pid)[0] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.01)
        assert_healthy(p)
        assert p.worker_pids() != [pid]
        assert "do-not-leak" not in p.run("import os\nprint(os.environ)").stdout


def test_workers_outlive_the_threads_that_use_them():
    # bwrap --die-with-parent follows the thread that started it; Ray actors call from
    # short-lived threads, so the pool must start workers from a thread of its own.
    made = {}
    creator = threading.Thread(target=lambda: made.update(pool=SandboxPool(1)))
    creator.start()
    creator.join()
    with made["pool"] as p:
        pids = p.worker_pids()
        outputs = []
        callers = [threading.Thread(target=lambda: outputs.append(p.run("print(2)").stdout)) for _ in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        time.sleep(0.2)
        assert outputs == ["2\n"] * 3
        assert p.worker_pids() == pids and all(w.alive() for w in p._workers)


def test_memory_cgroup_holds_the_snippet_when_permitted(pool):
    with SandboxPool(1, tier=pool.tier) as single:
        (worker,) = single._workers
        if worker.cgroup is None:
            pytest.skip("no writable cgroup hierarchy here")
        procs_file = os.path.join(worker.cgroup.memory_dir, "cgroup.procs")
        with open(procs_file) as f:
            idle_members = {int(pid) for pid in f.read().split()}
        # Look while a snippet runs: its process must have joined the worker's cgroup.
        runner = threading.Thread(target=single.run, args=("import time\ntime.sleep(1)",), kwargs={"memory_mb": 100})
        runner.start()
        time.sleep(0.5)
        with open(procs_file) as f:
            busy_members = {int(pid) for pid in f.read().split()}
        runner.join()
        assert idle_members and busy_members > idle_members
        limit_file = "memory.limit_in_bytes" if worker.cgroup.version == 1 else "memory.max"
        with open(os.path.join(worker.cgroup.memory_dir, limit_file)) as f:
            assert int(f.read()) == (100 + CGROUP_HEADROOM_MB) << 20


def test_falls_back_without_bwrap(monkeypatch, caplog):
    monkeypatch.setattr("sandbox.pool.bwrap_path", lambda: None)
    caplog.set_level(logging.WARNING, logger="sandbox")
    try:
        p = SandboxPool(1)
    except SandboxUnavailable:
        pytest.skip("no Landlock/seccomp tier on this machine either")
    with p:
        assert p.tier == "landlock-seccomp"
        assert_healthy(p)
    assert any("bwrap" in rec.getMessage() for rec in caplog.records)


def test_insecure_tier_needs_explicit_permission():
    with pytest.raises(SandboxUnavailable):
        SandboxPool(1, tier="rlimits")
    with SandboxPool(1, tier="rlimits", allow_insecure=True) as p:
        result = p.run("print(1+1)")
        assert result.stdout == "2\n" and result.tier == "rlimits"


@pytest.mark.skipif(not seccomp_filter.supported(), reason="seccomp filter not built for this architecture")
def test_syscall_numbers_match_kernel_headers():
    machine = platform.machine()
    header, column = {
        "x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", 0),
        "aarch64": ("/usr/include/asm-generic/unistd.h", 1),
    }[machine]
    if not os.path.exists(header):
        pytest.skip(f"{header} not installed")
    with open(header) as f:
        known = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", f.read())}
    tables = {
        **seccomp_filter.DENIED_SYSCALLS,
        **seccomp_filter.SIGNAL_SYSCALLS,
        "clone": seccomp_filter.CLONE,
        "clone3": seccomp_filter.CLONE3,
    }
    checked = 0
    for name, numbers in tables.items():
        if numbers[column] is not None and name in known:
            assert known[name] == numbers[column], name
            checked += 1
    assert checked > 50
