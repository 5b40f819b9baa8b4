"""`ray job submit` end to end, against a Ray head this test starts on private ports and stops itself."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT, metrics

pytestmark = pytest.mark.slow


def _private_ports(count: int) -> list[int]:
    """Distinct free ports below Linux's ephemeral range (32768+). A port the OS hands out for
    bind(0) is an ephemeral one, and the head's own processes take ephemeral ports while it
    starts: one of them once took the dashboard's port first."""
    rng, ports = random.Random(), []
    while len(ports) < count:
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture
def ray_head():
    """`ray start --head --block` in its own session; killing that session stops exactly this
    cluster (never `ray stop`, which would stop every cluster on the machine)."""
    ray_bin = Path(sys.executable).parent / "ray"
    temp_dir = tempfile.mkdtemp(prefix="rlpost-job-", dir="/tmp")
    port, dashboard, client, agent, agent_grpc, runtime_env_agent, metrics_port = _private_ports(7)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={client}",
            "--disable-usage-stats",
            # Private agent ports: another Ray on this machine (e.g. a test's ray.init) holds the defaults.
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}",
            f"--metrics-export-port={metrics_port}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(address, timeout=2)
            break
        except OSError:
            assert head.poll() is None, "ray head exited during start-up"
            assert time.time() < deadline, "ray head did not start"
            time.sleep(1)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def test_grpo_via_ray_job_submit(ray_head, sft_run, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "grpo_job"
    # A user's reward file outside the project, with a spread in every group (distinct characters),
    # so the one step trains whatever the tiny model writes.
    (tmp_path / "my_rewards.py").write_text(
        "def variety(prompts, completions, **columns):\n    return [len(set(c)) / 50 for c in completions]\n"
    )
    command = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ".",
        "--",
        sys.executable,
        "recipes/grpo.py",
        "--config",
        "recipes/configs/grpo_tiny.yaml",
        "--model_path",
        str(sft_run / "model"),
        "--run_dir",
        str(run_dir),
        "--train.steps",
        "1",
        "--train.eval_every",
        "0",
        "--rollout.prompts_per_step",
        "4",
        "--rollout.n",
        "4",
        "--rollout.max_new_tokens",
        "32",
        "--rewards.functions",
        f"[{{name: math}}, {{name: '{tmp_path}/my_rewards.py:variety', weight: 0.5}}]",
        "--vllm.kv_cache_gib",
        "0.25",
        "--logging.wandb_mode",
        "disabled",
    ]
    for _attempt in range(30):
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        # The dashboard answers HTTP a few seconds before its job agent accepts submissions.
        if "No available agent to submit job" not in proc.stderr:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout
    steps = [m for m in metrics(run_dir) if "loss" in m]
    assert [m["step"] for m in steps] == [1] and "reward/variety" in steps[0]
    assert (run_dir / "model" / "model.safetensors").exists()


def test_relative_paths_in_a_job_copy_are_refused_with_a_hint(tmp_path, monkeypatch):
    """`ray job submit --working-dir .` runs the recipe in a temporary copy without runs/: a
    relative model path cannot be found there and a relative run folder would vanish with it."""
    from rlpost.config import ConfigError, check_path, save_config
    from rlpost.trainer import OptimConfig

    copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.raises(ConfigError, match=r"model_path: no such file or folder: runs/sft_tiny/model .*absolute path"):
        check_path("model_path", "runs/sft_tiny/model")
    with pytest.raises(ConfigError, match=r"run_dir: runs/grpo_job is relative; .*--working-dir"):
        save_config(OptimConfig(), "runs/grpo_job/config.yaml")
    save_config(OptimConfig(), tmp_path / "grpo_job" / "config.yaml")  # an absolute run folder is fine
    assert (tmp_path / "grpo_job" / "config.yaml").exists()


def test_a_recipe_starts_its_own_cluster_while_another_runs_on_the_machine(ray_head):
    """Without RAY_ADDRESS a recipe gets a private cluster, even while a `ray start` head (or
    another run) is up on this machine: ray.init alone would join that one and refuse num_cpus."""
    _, env = ray_head
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    code = "import ray; from rlpost.distributed.cluster import init_ray; init_ray(num_cpus=1); print(ray.cluster_resources()['CPU'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "1.0"  # its own one-CPU cluster, not the head's two CPUs
