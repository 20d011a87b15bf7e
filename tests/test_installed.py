"""qfleet installed from its wheel, run outside the repository: nothing may assume a source
checkout (the image runs `pip install .`, a user `pip install qfleet`)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The wheel installed into a folder of its own; the environment that imports qfleet
    from there (not from the checkout), with the working directory outside the repo."""
    tmp = tmp_path_factory.mktemp("installed")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp / "wheel"), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp / "wheel").glob("qfleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "qfleet/configs/cartpole.yaml" in names  # the presets travel with the package
    site = tmp / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                           "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("RAY_ADDRESS", None)
    where = subprocess.run([sys.executable, "-c", "import qfleet; print(qfleet.__file__)"],
                           capture_output=True, text=True, cwd=tmp, env=env, timeout=60)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    return {"cwd": str(tmp), **env}


def run(installed: dict[str, str], *args: str, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    env = dict(installed)
    cwd = env.pop("cwd")
    return subprocess.run([sys.executable, "-m", "qfleet.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def test_bench_learning_finds_its_default_config_when_installed(installed):
    """Without --config, `bench learning` loads the shipped CartPole config before it
    checks --against: the refusal of an unknown peer (not an unreadable config) proves it
    found the config, without spending a run's budget."""
    result = run(installed, "bench", "learning", "--against", "rllib", timeout=120)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.strip() == "qfleet: error: --against: expected sb3, got 'rllib'"


def test_the_docs_config_paths_name_the_shipped_presets_when_installed(installed):
    """`qfleet config` and a `configs/…` path as the docs write it work from anywhere."""
    described = run(installed, "config", "learner.lr")
    assert described.returncode == 0 and "learner.lr" in described.stdout
    env = dict(installed)
    cwd = env.pop("cwd")
    check = subprocess.run(
        [sys.executable, "-c", "from qfleet.config import load_config; "
         "c = load_config('configs/atari-100k.yaml'); print(c.env.id)"],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith("ALE/")
