"""cluster.yaml: valid for Ray's cluster launcher, and started safely (no cluster is started here)."""

import re
import shlex

import pytest
import yaml
from helpers import ROOT


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def start_commands(cfg: dict) -> list[str]:
    return cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]


def test_launcher_accepts_it(cluster):
    # What `ray up` does before it touches a node: fill in the provider's defaults, then check
    # the result against the launcher's JSON schema.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster))


def test_every_ray_command_is_the_venvs(cluster):
    project = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    venv_ray = f"{project}/.venv/bin/ray"
    commands = cluster["setup_commands"] + start_commands(cluster)
    rays = [word for command in commands for word in shlex.split(command) if re.search(r"(^|/)ray$", word)]
    assert rays and all(word == venv_ray for word in rays), rays
    assert all(venv_ray in shlex.split(command) for command in start_commands(cluster))
    # The node's venv gets the GPU stack.
    assert any(".venv/bin/pip install" in c and "[gpu]" in c for c in cluster["setup_commands"])


def test_token_auth_on_and_dashboard_local(cluster):
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"RAY_AUTH_MODE=disabled", text)
    starts = [c for c in start_commands(cluster) if " start " in f" {c} "]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts), starts
    # Every node reads the same token, copied from the machine that runs `ray up`.
    assert cluster["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    (head,) = [c for c in cluster["head_start_ray_commands"] if "--head" in c]
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head)
    assert hosts == ["127.0.0.1"], head


def test_rsync_leaves_out_local_state(cluster):
    excluded = {pattern.strip("/") for pattern in cluster.get("rsync_exclude", [])}
    assert {".venv", "runs", ".git"} <= excluded
