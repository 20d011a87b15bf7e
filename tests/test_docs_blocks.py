"""The docs' command blocks, run as written: every block marked `<!-- test: … -->` in a
page runs here, whole where it can (the nodes on one machine, the Python API example), and
otherwise its commands that need no cloud account (setting the image and project in the
cluster files, making the cluster token)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PAGES = {  # each block the tests run, and the page that holds it
    "python-api": "docs/guides/python-api.md",
    "local-nodes": "docs/clusters/local.md",
    "local-autoscaling": "docs/clusters/local.md",
    "aws": "docs/clusters/aws.md",
    "gcp": "docs/clusters/gcp.md",
    "kuberay": "docs/clusters/kubernetes.md",
}
TOKEN_PAGE = "docs/clusters/image.md"  # the one-line command that makes the cluster token
IMAGE = "registry.example.com/team/qfleet:0.1.0-gpu"
PLACEHOLDERS = ("YOUR-REGISTRY", "YOUR-PROJECT-ID")


def block(name: str) -> str:
    page = PAGES[name]
    text = (ROOT / page).read_text()
    match = re.search(rf"<!-- test: {name} -->\n```[a-z]*\n(.*?)```", text, flags=re.S)
    assert match, f"{page} has no block marked test: {name}"
    return match.group(1)


def token_line() -> str:
    lines = [line for line in (ROOT / TOKEN_PAGE).read_text().splitlines()
             if "secrets.token_hex(32)" in line and "~/.qfleet/ray_auth_token" in line]
    assert lines, f"{TOKEN_PAGE} has no command that makes ~/.qfleet/ray_auth_token"
    return lines[0]


def run_block(text: str, env: dict[str, str], timeout: float = 600
              ) -> subprocess.CompletedProcess[str]:
    """The block in bash from the repository root, stopping at the first failing line;
    whatever Ray it started is stopped afterwards."""
    try:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["bash", "cluster/local-stop.sh"], cwd=ROOT, env=env, timeout=120)


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    for run in ("job1", "auto1"):  # the block's own run dirs, from an earlier run
        shutil.rmtree(Path("/tmp/qfleet-runs") / run, ignore_errors=True)
    env = {**os.environ, "QFLEET_CLUSTER_DIR": str(tmp_path / "cluster")}
    env.pop("RAY_ADDRESS", None)
    return env


def summary(run: str) -> dict:
    return json.loads((Path("/tmp/qfleet-runs") / run / "summary.json").read_text())


def test_nodes_on_one_machine_block_runs_as_written(local_env):
    result = run_block(block("local-nodes"), local_env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "succeeded" in out and "worker node 3 joined" in out and "worker node 1 killed" in out
    s = summary("job1")
    assert s["stopped_by"] == "env_steps" and s["actor_nodes"] >= 2
    assert s["learner_node_id"] not in s["actor_node_ids"]


def test_autoscaling_nodes_block_runs_as_written(local_env):
    result = run_block(block("local-autoscaling"), local_env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "waiting for 3 CPUs from the autoscaler" in out
    assert "fleet complete: 3 actors running" in out
    s = summary("auto1")
    assert s["num_actors"] == 3 and s["actor_nodes"] >= 2 and s["stopped_by"] == "time_s"
    assert s["learner_node_id"] not in s["actor_node_ids"]
    status = out[out.index("From request_resources:"):]
    assert status.splitlines()[1].strip() == "(none)"  # the request was withdrawn
    assert "actor_cpu" in out  # `ray status` lists the autoscaled nodes


def setting_lines(name: str) -> str:
    """The block's lines that edit the repository's files (sed), to run on a copy."""
    return "\n".join(line for line in block(name).splitlines() if line.startswith("sed "))


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "cluster", tmp_path / "cluster")
    return tmp_path


def edit(copy: Path, name: str) -> None:
    env = {**os.environ, "IMAGE": IMAGE, "PROJECT": "my-project-123"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", setting_lines(name)],
                            cwd=copy, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not list(copy.rglob("*.bak"))  # `sed -i.bak … && rm`: GNU and BSD sed alike


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_one_command_names_your_image_and_project_in_a_launcher_file(copy, name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    edit(copy, name)
    text = (copy / "cluster" / f"{name}.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["docker"]["image"] == IMAGE
    body = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any(p in line for p in PLACEHOLDERS for line in body)
    validate_config(prepare_config(config))
    if name == "gcp":
        assert config["provider"]["project_id"] == "my-project-123"


def test_one_command_names_your_image_for_kuberay(copy):
    edit(copy, "kuberay")
    base = yaml.safe_load((copy / "cluster" / "k8s" / "base" / "kustomization.yaml").read_text())
    (entry,) = base["images"]
    assert f"{entry['newName']}:{entry['newTag']}" == IMAGE
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the rendering is not checked")
    rendered = subprocess.run([kubectl, "kustomize", str(copy / "cluster" / "k8s" / "job")],
                              capture_output=True, text=True, check=True).stdout
    images = re.findall(r"image: (\S+)", rendered)
    assert images and set(images) == {IMAGE}


def test_the_token_command_makes_a_private_token(tmp_path):
    line = token_line()
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run(["bash", "-euo", "pipefail", "-c", line], env=env, check=True)
    token = tmp_path / ".qfleet" / "ray_auth_token"
    assert re.fullmatch(r"[0-9a-f]{64}\n", token.read_text())
    assert token.stat().st_mode & 0o077 == 0


def test_python_api_example_runs_as_written(tmp_path):
    """The "From Python" guide's example, in a fresh interpreter, from a working directory
    with the repository's configs."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-c", block("python-api")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.strip().splitlines()[-3:]
    assert lines[0].split()[0] in ("env_steps", "target_return")
    assert float(lines[1]) > 0
    assert lines[2].startswith("(3, 2) [")
    assert (tmp_path / "runs" / "api" / "summary.json").is_file()
