"""The sandbox's attack battery, on every tier that works here.

Each attack must end within bounded time, leave nothing behind (no file on the host, no
surviving process of the sandbox) and leave the pool serving `print(1+1)` afterwards.
"""

import os
import platform
import socket
import tempfile
import time
import uuid

import pytest
from test_sandbox import assert_healthy, pool_processes, start_pool

from sandbox import seccomp_filter

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=["bwrap", "landlock-seccomp"])
def pool(request):
    p = start_pool(request.param)
    yield p
    p.close()


@pytest.fixture
def contained(pool):
    """Check, around one attack, that no new process survives it and the pool still works."""
    before = pool_processes(pool)
    yield
    after = pool_processes(pool)
    assert after <= before, f"processes left behind: {sorted(after - before)}"
    assert_healthy(pool)


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
