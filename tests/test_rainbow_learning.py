"""CartPole learns with each distributional head, with and without noisy nets: the real
fleet (`qfleet.train` on one local Ray shared by the runs), greedy ≥ 475 within a generous
budget; then what a run leaves works as for the expected-value learner: TensorBoard's loss
and expected Q, `load_policy(...).q_values`, `evaluate`, and a resume."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import qfleet
from qfleet.bench.common import scalars
from tests.conftest import CONFIGS, own_ray

pytestmark = pytest.mark.slow

# CartPole's discounted returns (γ = 0.99) lie in [0, 100].
C51 = ["learner.distribution=c51", "learner.v_min=0", "learner.v_max=100"]
QR = ["learner.distribution=qr"]
NOISY = ["network.noisy=true", "actors.epsilon=none"]


@pytest.fixture(scope="module")
def local_ray():
    with own_ray(num_cpus=3):
        yield


# qr with noisy nets learns too (`qfleet train configs/cartpole.yaml learner.distribution=qr
# network.noisy=true actors.epsilon=none`), but takes the longest: the suite's time goes to
# the three that cover both heads and the noise.
@pytest.mark.parametrize("overrides", [C51, QR, C51 + NOISY], ids=["c51", "qr", "c51-noisy"])
def test_cartpole_reaches_475(local_ray, tmp_path: Path, overrides: list[str]):
    run_dir = tmp_path / "run"
    summary = qfleet.train(CONFIGS / "cartpole.yaml", [*overrides, "stop.time_s=300"],
                           run_dir=run_dir)
    assert summary["stopped_by"] == "target_return", summary
    assert summary["eval_return_mean"] >= 475
    losses, q_values = scalars(run_dir, "losses/td_loss"), scalars(run_dir, "losses/q_values")
    assert losses and q_values and all(np.isfinite(e.value) for e in losses + q_values)
    # Expected values: a solved CartPole's discounted return is far above 0, below 100.
    assert 5 < q_values[-1].value < 110
    env = gym.make("CartPole-v1")
    obs = np.stack([env.reset(seed=s)[0] for s in range(4)])
    q = qfleet.load_policy(run_dir).q_values(obs)
    assert q.shape == (4, 2) and np.isfinite(q).all()
    assert np.array_equal(q, qfleet.load_policy(run_dir).q_values(obs))  # deterministic


def test_a_distributional_noisy_run_resumes_where_it_was(local_ray, tmp_path: Path):
    run_dir = tmp_path / "run"
    first = qfleet.train(CONFIGS / "cartpole.yaml",
                         [*C51, *NOISY, "stop.target_return=null", "stop.env_steps=2500"],
                         run_dir=run_dir)
    again = qfleet.train(None, ["stop.env_steps=5000"], run_dir=tmp_path / "again",
                         resume=run_dir)
    assert again["updates"] > first["updates"] > 0 and again["env_steps"] >= 5000
    assert len(qfleet.evaluate(tmp_path / "again", episodes=3)["episodes"]) == 3
