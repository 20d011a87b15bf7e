"""A real multi-node Ray cluster on this machine (head + worker nodes via `ray start`,
token auth on): training through `ray job submit`, actors on other nodes than the learner,
nodes joining and leaving mid-run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qfleet.bench.common import scalars
from tests.conftest import ROOT, local_cluster, summary

pytestmark = pytest.mark.slow  # local multi-node clusters via `ray start`

ON_LEARNER_NODES = 'learner.resources={"qfleet_learner": 1}'
"""The learner on the nodes labelled `qfleet_learner`: the head, unless QFLEET_LEARNER_NODES."""


@pytest.fixture
def cluster(tmp_path: Path):
    with local_cluster(tmp_path / "cluster", "cluster/local-start.sh", "2", "1",
                       port_base=24000) as env:
        yield env


def test_ray_job_submit_ships_the_working_dir_and_trains_on_worker_nodes(cluster, tmp_path):
    """`ray job submit --working-dir DIR`: a config that exists only in DIR (on the
    submitting machine) is what the job runs."""
    work = tmp_path / "work"
    work.mkdir()
    config = yaml.safe_load((ROOT / "configs" / "cartpole.yaml").read_text())
    config["stop"] = {"env_steps": 4000}
    (work / "only-here.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    cmd = ["ray", "job", "submit", "--address", cluster["QFLEET_JOB_ADDRESS"],
           "--working-dir", str(work), "--",
           "qfleet", "train", "only-here.yaml", "actors.num_actors=2", ON_LEARNER_NODES,
           "--run-dir", str(run_dir)]
    result = subprocess.run(cmd, cwd=tmp_path, env=cluster, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    s = summary(run_dir)
    assert s["env_steps"] >= 4000 and s["stopped_by"] == "env_steps"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["stop"]["env_steps"] == 4000
    assert s["actor_nodes"] >= 2
    assert s["learner_node_id"] not in s["actor_node_ids"]
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))


def test_auto_fleet_grows_when_a_node_joins_and_survives_a_node_loss(cluster, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "qfleet.cli", "train", "configs/cartpole.yaml",
           "actors.num_actors=auto", "stop.time_s=60", "stop.target_return=null",
           ON_LEARNER_NODES, "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cluster, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("qfleet:"):
                assert "2 actors" in line  # 3 CPUs: 1 for the learner, 2 actors
                break
        time.sleep(8)
        subprocess.run(["bash", "cluster/local-add-worker.sh", "3", "1"], cwd=ROOT,
                       env=cluster, check=True, timeout=120)
        time.sleep(12)
        subprocess.run(["bash", "cluster/local-kill-worker.sh", "1"], cwd=ROOT, env=cluster,
                       check=True, timeout=60)
        rest = proc.stdout.read()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest[-3000:]
    assert "joined: starting actor 2" in rest
    s = summary(run_dir)
    assert s["num_actors"] == 3 and s["actor_nodes"] >= 3
    assert s["actor_restarts"] >= 1 and s["stopped_by"] == "time_s"


ENV_BESIDE_THE_CONFIG = '''
import os

import gymnasium as gym
import numpy as np


class Walk(gym.Env):
    """Two steps right to the goal; notes where each copy was imported from."""

    observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, trace: str = "") -> None:
        if trace:
            with open(os.path.join(trace, f"{os.getpid()}"), "w") as out:
                out.write(__file__)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return np.array([1.0, 0.0], np.float32), {}

    def step(self, action):
        self.pos = max(0, self.pos + (1 if action == 1 else -1))
        done = self.pos >= 2
        return (np.array([0.0, 1.0], np.float32) if self.pos else np.array([1.0, 0.0],
                np.float32), float(done), done, False, {})
'''


def test_an_env_module_beside_the_config_reaches_actors_on_other_nodes(cluster, tmp_path):
    """`qfleet train` joining a cluster (RAY_ADDRESS), with the env in a module next to
    the config, neither installed nor in the working directory: Ray ships it to the
    workers, which import it from there."""
    project, trace = tmp_path / "project", tmp_path / "trace"
    project.mkdir()
    trace.mkdir()
    (project / "walk_env_beside.py").write_text(ENV_BESIDE_THE_CONFIG)
    config = yaml.safe_load((ROOT / "configs" / "cartpole.yaml").read_text())
    config["env"] = {"id": "walk_env_beside:Walk", "kwargs": {"trace": str(trace)},
                     "max_episode_steps": 20}
    config["stop"] = {"env_steps": 2000}
    (project / "walk.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "qfleet.cli", "train", str(project / "walk.yaml"),
           "actors.num_actors=2", ON_LEARNER_NODES, "--run-dir", str(run_dir)]
    result = subprocess.run(cmd, cwd=tmp_path, env=cluster, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    s = summary(run_dir)
    assert s["env_steps"] >= 2000 and s["actor_nodes"] >= 2
    imported_from = {p.read_text() for p in trace.iterdir()}
    shipped = {f for f in imported_from if "runtime_resources" in f}
    assert shipped, imported_from  # the workers' copies came from Ray's upload
    assert imported_from - shipped == {str(project / "walk_env_beside.py")}  # the driver's


QUICK_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000",
                       "RAY_health_check_failure_threshold": "3"}
"""A lost node noticed in ~3 s instead of Ray's ~15 s (docs/guides/failures.md)."""


def test_a_learner_whose_node_dies_comes_back_on_another_node_and_the_run_reaches_its_target(
        tmp_path):
    """The learner on a worker node (QFLEET_LEARNER_NODES=2: two nodes may host it), that
    whole node killed after the first checkpoint: the learner restarts on the other one
    from the run directory's checkpoint, and the run still reaches its target."""
    settings = {"QFLEET_LEARNER_NODES": "2", **QUICK_HEALTH_CHECKS}
    with local_cluster(tmp_path / "cluster", "cluster/local-start.sh", "3", "2",
                       port_base=25000, settings=settings) as env:
        run_dir = tmp_path / "run"
        cmd = [sys.executable, "-m", "qfleet.cli", "train", "configs/cartpole.yaml",
               "actors.num_actors=2", ON_LEARNER_NODES, "log.checkpoint_every_updates=100",
               "stop.time_s=240", "--run-dir", str(run_dir)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 180
            while not list((run_dir / "checkpoints").glob("ckpt-*.pt")):
                assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
                time.sleep(0.1)
            kill = subprocess.run(["bash", "cluster/local-kill-worker.sh", "learner"], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=60)
            assert kill.returncode == 0, kill.stdout + kill.stderr
            assert kill.stdout.strip() in {"worker node 1 killed", "worker node 2 killed"}
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "learner lost (its node died" in out and "learner back on cpu" in out, out[-3000:]
    assert "Last 20 lines of the Raylet logs" in out  # Ray's notice, cut to its first line
    assert "[state-dump]" not in out
    s = summary(run_dir)
    assert s["learner_restarts"] >= 1 and s["stopped_by"] == "target_return", s


def test_a_run_whose_head_died_continues_on_a_new_head_from_its_storage_uri(tmp_path):
    """The head (with the driver on it) killed mid-run, the run directory on a file://
    URI; a new cluster, and the same command (`--if-exists resume`) run from another
    machine's home (no staging copy): it continues from the URI's newest checkpoint, and
    the URI's TensorBoard curves go on from there."""
    bucket = tmp_path / "bucket"
    uri = f"file://{bucket}/run"
    cmd = [sys.executable, "-m", "qfleet.cli", "train", "configs/cartpole.yaml",
           "actors.num_actors=2", ON_LEARNER_NODES, "stop.target_return=null",
           "stop.env_steps=40000", "log.checkpoint_every_updates=200", "--run-dir", uri,
           "--if-exists", "resume"]
    with local_cluster(tmp_path / "cluster", "cluster/local-start.sh", "1", "2",
                       port_base=23000) as env:
        first = subprocess.Popen(cmd, cwd=ROOT, env={**env, "HOME": str(tmp_path / "head1")},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 180
            while not list((bucket / "run" / "checkpoints").glob("ckpt-*.pt")):
                assert first.poll() is None and time.monotonic() < deadline, "no checkpoint"
                time.sleep(0.2)
            time.sleep(2.0)  # a little past the checkpoint, as a crash would be
        finally:
            first.kill()  # the driver dies with its machine
            first.communicate(timeout=60)
        for script in ("local-kill-head.sh", "local-stop.sh", "local-start.sh"):
            args = ["1", "2"] if script == "local-start.sh" else []
            out = subprocess.run(["bash", f"cluster/{script}", *args], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stdout + out.stderr
        checkpoints = sorted((bucket / "run" / "checkpoints").glob("ckpt-*.pt"))
        newest = int(checkpoints[-1].stem.split("-")[1])
        second = subprocess.run(cmd, cwd=ROOT, env={**env, "HOME": str(tmp_path / "head2")},
                                capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    s = summary(bucket / "run")
    assert s["stopped_by"] == "env_steps" and s["env_steps"] >= 40000
    events = sorted((bucket / "run").glob("events.out.tfevents.*"))
    assert len(events) == 2  # one per driver, side by side
    first_run, resumed = (scalars(e, "learner/updates") for e in events)
    assert first_run and resumed
    assert resumed[0].value >= newest  # went on from the newest checkpoint, not from zero
    # Rolled back by at most a checkpoint period (log.checkpoint_every_updates).
    assert max(e.value for e in first_run) - newest <= 200
    assert resumed[0].step >= first_run[0].step  # the env-step axis goes on, not from zero
