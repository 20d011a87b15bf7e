"""Helpers that run the real `qfleet` command (real local Ray, real environments)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def qfleet(*args: str, timeout: float = 600, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    """Run `python -m qfleet.cli ARGS` and capture its output."""
    return subprocess.run([sys.executable, "-m", "qfleet.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qfleet: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@contextlib.contextmanager
def own_ray(num_cpus: int, num_gpus: int = 0) -> Iterator[None]:
    """A Ray of this test's own in this process: `address="local"`, since a plain
    `ray.init()` joins the cluster another test (process) started last on this machine."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def local_cluster(state_dir: Path, script: str, *args: str, port_base: int,
                  settings: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """A cluster started by one of `cluster/local-*start.sh` on its own ports; yields the
    environment a client of it needs (the script's export lines), and stops it. Nodes take
    ports from `port_base` up; the GCS and the job server just below it. `settings`: more
    environment for the script (QFLEET_LEARNER_NODES, Ray's RAY_* settings)."""
    env = {**os.environ, **(settings or {}), "QFLEET_CLUSTER_DIR": str(state_dir),
           "QFLEET_PORT_BASE": str(port_base), "QFLEET_GCS_PORT": str(port_base - 10),
           "QFLEET_DASHBOARD_PORT": str(port_base - 20)}
    env.pop("RAY_ADDRESS", None)
    try:
        out = subprocess.run(["bash", script, *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        for line in out.stdout.splitlines():
            if line.startswith("export "):
                key, value = line[len("export "):].split("=", 1)
                env[key] = value
        yield env
    finally:
        subprocess.run(["bash", "cluster/local-stop.sh"], cwd=ROOT, env=env, timeout=120)
