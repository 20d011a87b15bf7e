"""CartPole learns with each distributional head, with and without noisy nets: the real
fleet (`qfleet.train` on one local Ray shared by the four runs), greedy ≥ 475 within a
generous budget."""

from pathlib import Path

import pytest
import ray

import qfleet
from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration

# CartPole's discounted returns (γ = 0.99) lie in [0, 100].
C51 = ["learner.distribution=c51", "learner.v_min=0", "learner.v_max=100"]
QR = ["learner.distribution=qr"]
NOISY = ["network.noisy=true", "actors.epsilon=none"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=3, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.parametrize("overrides", [C51, QR, C51 + NOISY, QR + NOISY],
                         ids=["c51", "qr", "c51-noisy", "qr-noisy"])
def test_cartpole_reaches_475(local_ray, tmp_path: Path, overrides: list[str]):
    summary = qfleet.train(CONFIGS / "cartpole.yaml", [*overrides, "stop.time_s=300"],
                           run_dir=tmp_path / "run")
    assert summary["stopped_by"] == "target_return", summary
    assert summary["eval_return_mean"] >= 475
