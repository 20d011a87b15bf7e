"""The fleet asks Ray's own autoscaler for nodes: a head of 1 CPU (the learner's) and worker
nodes launched on this machine on demand by Ray's fake multi-node provider
(`cluster/local-autoscale-start.sh`), exactly as on a cloud with `min_workers: 0`. The fleet
growing onto autoscaled nodes: tests/test_docs_blocks.py runs docs/clusters/local.md's block
for it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, local_cluster, summary

pytestmark = pytest.mark.slow

LABELS = ['learner.resources={"qfleet_learner": 1}', 'actors.resources={"qfleet_actor": 1}']
PROBE = """
import json, ray
from ray.experimental.internal_kv import _internal_kv_get
from qfleet.driver.placement import autoscaler_present
ray.init(logging_level="WARNING")
request = _internal_kv_get("autoscaler_resource_request")
print(json.dumps({"autoscaler": autoscaler_present(),
                  "request": json.loads(request) if request else None}))
"""


def probe(env: dict[str, str]) -> dict:
    """What a fresh driver sees of the cluster's autoscaler (in its own process)."""
    import json

    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def autoscaling(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("autoscaling")
    with local_cluster(state, "cluster/local-autoscale-start.sh", "3", "1",
                       port_base=26000) as env:
        deadline = time.monotonic() + 60
        while not probe(env)["autoscaler"]:  # the monitor's first report
            assert time.monotonic() < deadline, "the autoscaler never reported"
            time.sleep(2)
        yield env


def train(env: dict[str, str], run_dir: Path, *overrides: str, timeout: float = 400
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qfleet.cli", "train", "configs/cartpole.yaml",
                           *LABELS, *overrides, "--run-dir", str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_fleet_no_node_type_can_host_ends_cleanly(autoscaling, tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    result = train(autoscaling, run_dir, "actors.num_actors=2", "actors.scale_timeout_s=15",
                   'actors.resources={"qfleet_gpu_actor": 1}', "stop.time_s=600")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert time.monotonic() - start < 180
    assert "Traceback" not in out
    s = summary(run_dir)
    assert s["stopped_by"] == "no_nodes"
    assert "0 of 2 actors running" in s["stop_message"]
    assert "actors.scale_timeout_s=15" in s["stop_message"]
    assert probe(autoscaling)["request"] == []


def test_auto_without_a_ceiling_on_an_autoscaling_cluster_is_bad_input(autoscaling, tmp_path):
    result = train(autoscaling, tmp_path / "run", "actors.num_actors=auto", "stop.time_s=60")
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "set actors.max_actors" in result.stderr.strip().splitlines()[-1]
