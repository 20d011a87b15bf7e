"""The KubeRay files (cluster/k8s): each manifest parses, the RayJob and the RayCluster
describe the same cluster (GPU head with the learner, autoscaled actor group on spot nodes
that the head never takes, token auth, non-root pods writing the run volume), the
NetworkPolicy covers their pods, and the image is named once and reaches every container
through kustomize."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "cluster" / "k8s"
ENTRY_POINTS = {"job": "RayJob", "interactive": "RayCluster"}
RUNS_MOUNT = "/home/ray/runs"


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under cluster/k8s, by kind."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and "kind" in doc, path
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def only(kind: str) -> dict[str, Any]:
    docs = manifests().get(kind, [])
    assert len(docs) == 1, f"one {kind} expected, found {len(docs)}"
    return docs[0]


def cluster_specs() -> dict[str, dict[str, Any]]:
    return {"RayJob": only("RayJob")["spec"]["rayClusterSpec"],
            "RayCluster": only("RayCluster")["spec"]}


def groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, group spec) for the head group and every worker group."""
    return [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def ray_resources(params: dict[str, str]) -> dict[str, int]:
    """Custom resources of a group as Ray's KubeRay autoscaler reads `rayStartParams.resources`
    (outer quotes dropped, backslashes removed), checked against what `ray start` gets from
    the shell line KubeRay writes (`--resources=VALUE`)."""
    raw = params.get("resources")
    if raw is None:
        return {}
    by_autoscaler = json.loads(raw[1:-1].replace("\\", ""))
    (flag,) = shlex.split(f"--resources={raw}")
    assert json.loads(flag.removeprefix("--resources=")) == by_autoscaler
    assert all(isinstance(v, int) for v in by_autoscaler.values()), raw
    return by_autoscaler


def quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def entrypoint_config() -> tuple[Path, dict[str, Any]]:
    words = shlex.split(only("RayJob")["spec"]["entrypoint"])
    assert words[:2] == ["qfleet", "train"], words
    path = ROOT / words[2]
    assert path.is_file(), f"the entrypoint's config {words[2]} is not in the repository"
    return path, yaml.safe_load(path.read_text())


def test_the_job_and_the_interactive_cluster_describe_the_same_cluster():
    specs = cluster_specs()
    assert specs["RayJob"] == specs["RayCluster"]


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_token_auth_on_and_ray_version_matches_the_pin(kind):
    spec = cluster_specs()[kind]
    assert spec["authOptions"] == {"mode": "token"}
    pin = re.search(r'"ray\[[a-z,]+\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and spec["rayVersion"] == pin.group(1)


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_the_job_api_is_reachable_inside_the_cluster_only(kind):
    head = cluster_specs()[kind]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]
             ["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_autoscaling_actor_group_with_qfleet_actor_per_cpu(kind):
    spec = cluster_specs()[kind]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    workers = spec["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert 0 == group["minReplicas"] == group.get("replicas", 0) < group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits
        cpus = int(group["rayStartParams"].get("num-cpus", quantity(limits["cpu"])))
        assert ray_resources(group["rayStartParams"]).get("qfleet_actor") == cpus >= 1


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_gpu_head_holds_the_learner_and_no_actors(kind):
    head = cluster_specs()[kind]["headGroupSpec"]
    params, container = head["rayStartParams"], head["template"]["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1 and int(params["num-gpus"]) >= 1
    resources = ray_resources(params)
    assert resources.get("qfleet_learner", 0) >= 1 and "qfleet_actor" not in resources
    assert 1 <= int(params["num-cpus"]) <= quantity(limits["cpu"])  # the learner's CPU


def test_the_entrypoint_config_asks_for_the_nodes_the_manifests_label():
    _, config = entrypoint_config()
    spec = cluster_specs()["RayJob"]
    head = ray_resources(spec["headGroupSpec"]["rayStartParams"])
    workers = [ray_resources(g["rayStartParams"]) for g in spec["workerGroupSpecs"]]
    actor_needs = (config.get("actors") or {}).get("resources") or {}
    learner_needs = (config.get("learner") or {}).get("resources") or {}
    assert actor_needs.get("qfleet_actor", 0) > 0, "actors would be free to land on the head"
    assert learner_needs.get("qfleet_learner", 0) > 0
    assert all(head.get(k, 0) >= v for k, v in learner_needs.items())
    assert any(all(w.get(k, 0) >= v for k, v in actor_needs.items()) for w in workers)
    assert not any(head.get(k, 0) for k in actor_needs)


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_pods_run_as_the_image_user_and_can_write_a_fresh_volume(kind):
    for name, group in groups(cluster_specs()[kind]):
        pod = group["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000, name
        assert security["fsGroup"] == security["runAsGroup"] == 100, name
        shm = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium")
               == "Memory"}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts.get("/dev/shm") in shm, f"{name}: no memory /dev/shm"


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_the_run_volume_is_a_claim_mounted_on_the_head(kind):
    claim = only("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"].endswith("Gi")
    pod = cluster_specs()[kind]["headGroupSpec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert claims.get(mounts.get(RUNS_MOUNT)) == claim["metadata"]["name"]


def test_the_job_writes_its_run_dir_to_the_volume_and_cleans_up():
    job = only("RayJob")["spec"]
    words = shlex.split(job["entrypoint"])
    run_dir = Path(words[words.index("--run-dir") + 1])
    assert run_dir.is_relative_to(RUNS_MOUNT) and run_dir != Path(RUNS_MOUNT)
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job.get("submissionMode", "K8sJobMode") == "K8sJobMode"


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_the_network_policy_covers_every_ray_pod(kind):
    policy = only("NetworkPolicy")["spec"]
    assert "Ingress" in policy["policyTypes"]
    selector = policy["podSelector"]["matchLabels"]
    assert selector.get("ray.io/is-ray-node") == "yes"  # KubeRay's label, on Ray pods only
    for name, group in groups(cluster_specs()[kind]):
        labels = {"ray.io/is-ray-node": "yes", **group["template"]["metadata"]["labels"]}
        assert selector.items() <= labels.items(), f"{name} pods are not selected"


def test_the_network_policy_admits_the_namespace_and_the_operator_on_8265_only():
    rules = only("NetworkPolicy")["spec"]["ingress"]
    assert rules and all(rule.get("from") for rule in rules)  # a rule without `from`: anyone
    for rule in rules:
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            if "namespaceSelector" in peer:  # another namespace: the operator's job API polls
                assert peer["namespaceSelector"]["matchLabels"].keys() == {
                    "kubernetes.io/metadata.name"}
                assert rule["ports"] == [{"protocol": "TCP", "port": 8265}]
            else:
                assert peer == {"podSelector": {}}


def test_the_image_is_named_once_and_every_container_takes_it():
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (image,) = base["images"]
    written = sum(p.read_text().count(image["newName"]) for p in K8S.rglob("*.yaml"))
    assert written == 1, f"{image['newName']} written {written} times under cluster/k8s"
    for kind, spec in cluster_specs().items():
        for name, group in groups(spec):
            for container in group["template"]["spec"]["containers"]:
                assert container["image"] == image["name"], f"{kind} {name}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_kustomize_renders_each_entry_point_with_the_image(entry):
    result = subprocess.run(["kubectl", "kustomize", str(K8S / entry)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert sorted(d["kind"] for d in docs) == sorted(
        ["PersistentVolumeClaim", "NetworkPolicy", ENTRY_POINTS[entry]])
    image = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"][0]
    ray = next(d for d in docs if d["kind"] == ENTRY_POINTS[entry])
    spec = ray["spec"]["rayClusterSpec"] if entry == "job" else ray["spec"]
    images = [c["image"] for _, g in groups(spec) for c in g["template"]["spec"]["containers"]]
    assert len(images) >= 2
    assert set(images) == {f"{image['newName']}:{image['newTag']}"}


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_ray_job_stop_leaves_the_driver_time_for_its_final_checkpoint(kind):
    head = cluster_specs()[kind]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in head.get("env", [])}
    assert float(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60  # Ray's default is 3 s


# -- spot actor nodes --------------------------------------------------------------------------
def selects(requirement: dict[str, Any], labels: dict[str, str]) -> bool:
    """One node selector requirement as Kubernetes evaluates it (NotIn and DoesNotExist
    hold on a node without the label)."""
    key, op, values = requirement["key"], requirement["operator"], requirement.get("values", [])
    return {"In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels}[op]


def schedulable(pod: dict[str, Any], labels: dict[str, str],
                taints: list[dict[str, str]]) -> bool:
    """Whether the scheduler may put the pod on a node: nodeSelector, required node
    affinity (terms ORed, expressions ANDed) and NoSchedule taints against tolerations."""
    if any(labels.get(k) != v for k, v in pod.get("nodeSelector", {}).items()):
        return False
    required = (pod.get("affinity", {}).get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required and not any(all(selects(r, labels) for r in term["matchExpressions"])
                            for term in required["nodeSelectorTerms"]):
        return False

    def tolerated(taint: dict[str, str]) -> bool:
        return any(t["key"] == taint["key"] and t.get("effect", taint["effect"]) == taint["effect"]
                   and (t["operator"] == "Exists" or t.get("value") == taint["value"])
                   for t in pod.get("tolerations", []))
    return all(tolerated(t) for t in taints if t["effect"] == "NoSchedule")


GKE_SPOT = {"cloud.google.com/gke-spot": "true"}  # the label GKE puts on Spot VM nodes
EKS_SPOT = {"eks.amazonaws.com/capacityType": "SPOT"}  # EKS managed node groups' label
SPOT_TAINT = {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}
NODES = {  # name: (labels, taints, a spot node)
    "gke spot": (GKE_SPOT, [], True),
    "gke spot, tainted": (GKE_SPOT, [SPOT_TAINT], True),
    "eks spot": (EKS_SPOT, [], True),
    "eks on demand": ({"eks.amazonaws.com/capacityType": "ON_DEMAND"}, [], False),
    "gke standard": ({"cloud.google.com/gke-nodepool": "default-pool"}, [], False),
}


@pytest.mark.parametrize("kind", ENTRY_POINTS.values())
def test_the_actor_group_runs_on_spot_nodes_and_the_head_never_does(kind):
    spec = cluster_specs()[kind]
    head = spec["headGroupSpec"]["template"]["spec"]
    (actors,) = spec["workerGroupSpecs"]
    assert ray_resources(actors["rayStartParams"]).get("qfleet_actor", 0) >= 1
    actor_pod = actors["template"]["spec"]
    for name, (labels, taints, spot) in NODES.items():
        assert schedulable(actor_pod, labels, taints) == spot, name
        assert schedulable(head, labels, taints) != spot, name
