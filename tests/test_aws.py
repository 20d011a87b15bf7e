"""What of the AWS walkthrough runs without an account, against a local AWS (moto's S3, IAM
and EC2 server): `qfleet train --run-dir s3://…` mirroring into a bucket, TensorBoard
reading the curves straight from it with the AWS guide's command, cluster/aws-setup.sh, and
Ray's own AWS bootstrap of cluster/aws.yaml (the first thing `ray up` does)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, summary

pytestmark = pytest.mark.slow

BUCKET = "qfleet-runs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture
def local_aws(tmp_path) -> Iterator[dict[str, str]]:
    """A local S3 endpoint with one bucket; the environment that points AWS clients at it
    (pyarrow and boto3 both read AWS_ENDPOINT_URL)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"})
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "us-west-2",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "HOME": str(tmp_path)}  # the staging copy lands under ~/.cache
    env.pop("RAY_ADDRESS", None)
    try:
        wait_http(f"http://127.0.0.1:{port}/", 30)
        subprocess.run([sys.executable, "-c", "import boto3; boto3.client('s3').create_bucket("
                        f"Bucket='{BUCKET}', CreateBucketConfiguration="
                        "{'LocationConstraint': 'us-west-2'})"], env=env, check=True)
        yield env
    finally:
        server.kill()
        server.wait()


def test_a_run_in_a_bucket_is_mirrored_and_tensorboard_reads_it(local_aws, tmp_path):
    uri = f"s3://{BUCKET}/runs/cp"
    result = subprocess.run([sys.executable, "-m", "qfleet.cli", "train", "configs/cartpole.yaml",
                             "stop.env_steps=3000", "stop.target_return=null",
                             "--run-dir", uri], cwd=ROOT, env=local_aws, capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    listing = subprocess.run([sys.executable, "-c", "import boto3; print('\\n'.join(o['Key'] for "
                              f"o in boto3.client('s3').list_objects_v2(Bucket='{BUCKET}')"
                              "['Contents']))"], env=local_aws, capture_output=True, text=True,
                             check=True).stdout.split()
    assert "runs/cp/summary.json" in listing and "runs/cp/config.yaml" in listing
    assert any(k.startswith("runs/cp/checkpoints/ckpt-") for k in listing)
    assert any(k.startswith("runs/cp/events.out.tfevents.") for k in listing)
    staged = next((tmp_path / ".cache" / "qfleet" / "staging").iterdir())
    assert summary(staged)["run_uri"] == uri

    # docs/clusters/aws.md: `AWS_DEFAULT_REGION=us-west-2 tensorboard --logdir s3://YOUR-BUCKET/runs/si`
    port = free_port()
    board = subprocess.Popen(["tensorboard", "--logdir", uri, "--port", str(port),
                              "--host", "127.0.0.1", "--reload_interval", "1"],
                             env=local_aws, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
        deadline = time.monotonic() + 120
        while True:
            tags = json.loads(wait_http(url, 60))
            if any("charts/episodic_return" in run for run in tags.values()):
                break
            assert time.monotonic() < deadline, f"TensorBoard found no curves: {tags}"
            time.sleep(2)
    finally:
        board.kill()
        board.wait()


def aws(env: dict[str, str], *args: str) -> str:
    return subprocess.run(["aws", *args, "--output", "json"], env=env, capture_output=True,
                          text=True, check=True).stdout


def profile(env: dict[str, str], name: str) -> tuple[dict, set[str], dict[str, dict]]:
    """An instance profile, its role's managed policies and its inline ones."""
    found = json.loads(aws(env, "iam", "get-instance-profile", "--instance-profile-name",
                           name))["InstanceProfile"]
    assert [r["RoleName"] for r in found["Roles"]] == [name]
    attached = json.loads(aws(env, "iam", "list-attached-role-policies", "--role-name",
                              name))["AttachedPolicies"]
    names = json.loads(aws(env, "iam", "list-role-policies", "--role-name", name))["PolicyNames"]
    inline = {n: json.loads(aws(env, "iam", "get-role-policy", "--role-name", name,
                                "--policy-name", n))["PolicyDocument"] for n in names}
    return found, {p["PolicyName"] for p in attached}, inline


def test_aws_setup_makes_least_privilege_profiles_and_can_run_again(local_aws):
    env = {**local_aws, "QFLEET_IAM_SETTLE_S": "1"}
    outputs = []
    for _ in range(2):  # once per account, but harmless again
        result = subprocess.run(["bash", "cluster/aws-setup.sh", "qfleet-runs"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    # New profiles: it waits for EC2 to see them; the second run created nothing.
    assert "waiting 1 s" in outputs[0] and "waiting" not in outputs[1]
    head, head_managed, head_inline = profile(local_aws, "qfleet-head")
    worker, worker_managed, worker_inline = profile(local_aws, "qfleet-worker")
    assert head_managed == {"AmazonEC2FullAccess", "AmazonSSMReadOnlyAccess",
                            "AmazonEC2ContainerRegistryReadOnly"}
    # The actor nodes: image pulls and the run bucket, nothing else (no EC2, IAM, S3 at large).
    assert worker_managed == {"AmazonEC2ContainerRegistryReadOnly"}
    assert set(worker_inline) == {"run-bucket"}
    for inline in (head_inline, worker_inline):
        resources = {r for st in inline["run-bucket"]["Statement"]
                     for r in ([st["Resource"]] if isinstance(st["Resource"], str)
                               else st["Resource"])}
        assert resources == {"arn:aws:s3:::qfleet-runs", "arn:aws:s3:::qfleet-runs/*"}
    (passing,) = head_inline["pass-node-roles"]["Statement"]
    assert passing["Action"] == "iam:PassRole"
    assert set(passing["Resource"]) == {head["Roles"][0]["Arn"], worker["Roles"][0]["Arn"]}
    missing = subprocess.run(["bash", "cluster/aws-setup.sh"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "usage: cluster/aws-setup.sh BUCKET" in missing.stderr


BOOTSTRAP = """
import json, yaml
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.util import prepare_config, validate_config
config = prepare_config(yaml.safe_load(open("cluster/aws.yaml")))
validate_config(config)
config = _bootstrap_config(config, no_config_cache=True)
print(json.dumps(config["available_node_types"]))
"""


def test_rays_aws_bootstrap_takes_the_cluster_file(local_aws):
    """`ray up`'s bootstrap: the instance profile cluster/aws-setup.sh made, a key pair,
    subnets and a security group; CPUs and GPUs read off the instance types."""
    subprocess.run(["bash", "cluster/aws-setup.sh", "qfleet-runs"], cwd=ROOT,
                   env={**local_aws, "QFLEET_IAM_SETTLE_S": "0"}, check=True,
                   capture_output=True, timeout=120)
    result = subprocess.run([sys.executable, "-c", BOOTSTRAP], cwd=ROOT, env=local_aws,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    types = json.loads(result.stdout.strip().splitlines()[-1])
    head, workers = types["head_gpu"], types["actor_cpu"]
    assert head["resources"]["CPU"] == 16 and head["resources"]["GPU"] == 1
    assert head["resources"]["qfleet_learner"] == 1
    assert workers["resources"]["CPU"] == workers["resources"]["qfleet_actor"] == 32
    for node, name in ((head, "qfleet-head"), (workers, "qfleet-worker")):
        config = node["node_config"]
        assert config["IamInstanceProfile"] == {"Name": name}
        assert config["SubnetIds"] and config["SecurityGroupIds"] and config["KeyName"]
