"""Tests for sandbox/: normal behaviour and an attack battery, on every tier that works here.

Each attack must end within bounded time, leave nothing behind (no file on the host, no
surviving process of the sandbox) and leave the pool serving `print(1+1)` afterwards.
"""

import logging
import os
import platform
import re
import signal
import socket
import tempfile
import threading
import time
import uuid

import pytest

import sandbox
from sandbox import SandboxPool, SandboxUnavailable, seccomp_filter
from sandbox.pool import CGROUP_HEADROOM_MB, _process_tree

pytestmark = pytest.mark.timeout(120)


def _start_pool(tier, **kwargs):
    try:
        return SandboxPool(2, tier=tier, timeout_s=5, **kwargs)
    except SandboxUnavailable as exc:
        pytest.skip(f"tier {tier} unavailable here: {exc}")


@pytest.fixture(scope="module", params=["bwrap", "landlock-seccomp"])
def pool(request):
    p = _start_pool(request.param)
    yield p
    p.close()


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def pool_processes(pool):
    """Every process belonging to the pool: worker trees and the workers' sessions."""
    pids = set()
    for root in pool.worker_pids():
        pids.update(_process_tree(root))
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if int(_stat_fields(name)[3]) == root:
                        pids.add(int(name))
                except (OSError, IndexError):
                    pass
    return pids


def assert_healthy(pool):
    result = pool.run("print(1+1)")
    assert result.stdout == "2\n", result
    assert result.reason == "ok"


@pytest.fixture
def contained(pool):
    """Check, around one attack, that no new process survives it and the pool still works."""
    before = pool_processes(pool)
    yield
    after = pool_processes(pool)
    assert after <= before, f"processes left behind: {sorted(after - before)}"
    assert_healthy(pool)


# ---------------------------------------------------------------- normal behaviour


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
                if _stat_fields(pid)[0] == "Z":
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


# ---------------------------------------------------------------- attack battery


def test_attack_infinite_loop(pool, contained):
    result = pool.run("x = 0\nwhile True:\n    x += 1", timeout_s=1)
    assert result.timed_out and result.duration_s < 4


def test_attack_memory_bomb(pool, contained):
    start = time.monotonic()
    result = pool.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", memory_mb=128, timeout_s=5)
    assert result.reason in ("error", "signal"), result
    assert "MemoryError" in result.stderr or result.exit_code < 0
    assert time.monotonic() - start < 5


def test_attack_fork_bomb(pool, contained):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    result = pool.run(code, timeout_s=1.5)
    assert result.reason != "ok"
    assert time.monotonic() - start < 6


def test_attack_tcp_to_host_loopback(pool, contained):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        "for family, address in ((socket.AF_INET, ('127.0.0.1', %d)), (socket.AF_INET6, ('::1', %d))):\n"
        "    try:\n"
        "        socket.create_connection(address, timeout=1)\n"
        "        print('connected')\n"
        "    except OSError as exc:\n"
        "        print('blocked', exc.errno)\n"
    ) % (port, port)
    try:
        result = pool.run(code)
        assert "connected" not in result.stdout and result.stdout.count("blocked") == 2, result
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_attack_read_secrets(pool, contained):
    # A world-readable host file: only namespaces/Landlock, not permissions, keep it out.
    fd, host_file = tempfile.mkstemp(prefix="rlpost-sandbox-secret-", dir="/tmp")
    os.write(fd, b"TOP-SECRET")
    os.close(fd)
    os.chmod(host_file, 0o644)
    shm_file = f"/dev/shm/rlpost-sandbox-secret-{uuid.uuid4().hex}"
    with open(shm_file, "w") as f:
        f.write("TOP-SECRET")
    os.chmod(shm_file, 0o644)
    targets = [
        "/etc/shadow",
        "/root/.bashrc",
        "/root/.profile",
        "/root/.ssh/id_rsa",
        host_file,
        shm_file,
        "/proc/1/environ",
    ]
    code = (
        "import os\n"
        "for path in %r:\n"
        "    try:\n"
        "        print('READ', path, open(path).read()[:40])\n"
        "    except OSError as exc:\n"
        "        print('denied', path, exc.errno)\n"
        "try:\n"
        "    print('LISTED /root', os.listdir('/root'))\n"
        "except OSError as exc:\n"
        "    print('denied /root', exc.errno)\n"
    ) % (targets,)
    try:
        result = pool.run(code)
    finally:
        os.unlink(host_file)
        os.unlink(shm_file)
    assert "READ" not in result.stdout and "LISTED" not in result.stdout, result.stdout
    assert "TOP-SECRET" not in result.stdout + result.stderr
    assert result.stdout.count("denied") == len(targets) + 1


def test_attack_write_outside_scratch(pool, contained):
    name = f"rlpost-sandbox-pwned-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/dev/shm/{name}", f"{os.getcwd()}/{name}", f"../{name}", f"/var/tmp/{name}"]
    code = (
        "for path in %r:\n"
        "    try:\n"
        "        open(path, 'w').write('pwned')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print('denied', path, exc.errno)\n"
    ) % (targets,)
    result = pool.run(code)
    for path in targets:
        if not path.startswith(".."):
            assert not os.path.exists(path), f"{path} appeared on the host"
    assert not os.path.exists(os.path.join("/tmp", name))
    # Writing inside the sandbox's own /dev/shm may succeed in the bwrap tier; never on the host.
    wrote = [line for line in result.stdout.splitlines() if line.startswith("WROTE")]
    assert all("/dev/shm/" in line for line in wrote), result.stdout


def test_attack_kill_parent_and_init(pool, contained):
    code = (
        "import os, signal\n"
        "for pid in (os.getppid(), 1, -1, -os.getppid()):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        print('KILLED', pid)\n"
        "    except OSError as exc:\n"
        "        print('denied', pid, exc.errno)\n"
    )
    result = pool.run(code)
    assert "KILLED" not in result.stdout and result.stdout.count("denied") == 4, result


def test_attack_stdout_flood(pool, contained):
    start = time.monotonic()
    result = pool.run("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 10**6)", timeout_s=20)
    assert result.truncated and len(result.stdout) == 16384
    assert time.monotonic() - start < 5


@pytest.mark.skipif(not seccomp_filter.supported(), reason="syscall numbers known for x86_64/aarch64 only")
def test_attack_ctypes_raw_syscalls(pool, contained):
    column = 0 if platform.machine() == "x86_64" else 1
    names = ("socket", "ptrace", "unshare", "memfd_create")
    numbers = {name: seccomp_filter.DENIED_SYSCALLS[name][column] for name in names}
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "args = {'socket': (2, 1, 0), 'ptrace': (16, 1, 0, 0), 'unshare': (0x10000000,), 'memfd_create': (b'x', 0)}\n"
        "for name, number in %r.items():\n"
        "    print(name, libc.syscall(number, *args[name]), ctypes.get_errno())\n"
    ) % (numbers,)
    result = pool.run(code)
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.split()[1] == "-1" for line in lines), result


def test_attack_spawn_shell(pool, contained):
    code = (
        "import os, subprocess\n"
        "print('system', os.system('echo pwned'))\n"
        "try:\n"
        "    print(subprocess.run(['/bin/sh', '-c', 'echo pwned'], capture_output=True).stdout)\n"
        "except OSError as exc:\n"
        "    print('denied', exc.errno)\n"
    )
    result = pool.run(code)
    assert "pwned" not in result.stdout and "denied" in result.stdout, result


def test_attack_setsid_double_fork(pool, contained):
    code = (
        "import os, time\n"
        "try:\n"
        "    os.setsid()\n"
        "except OSError as exc:\n"
        "    print('setsid denied', exc.errno)\n"
        "if os.fork() == 0:\n"
        "    try:\n"
        "        os.setsid()\n"
        "    except OSError:\n"
        "        pass\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('parent done')\n"
    )
    result = pool.run(code)
    assert result.stdout.endswith("parent done\n"), result
    # `contained` checks that the sleeping grandchild did not survive.


def test_attack_deep_recursion(pool, contained):
    result = pool.run("def f(n):\n    return f(n + 1)\nf(0)")
    assert "RecursionError" in result.stderr
    start = time.monotonic()
    result = pool.run("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)", timeout_s=2)
    assert result.reason != "ok"
    assert time.monotonic() - start < 6
