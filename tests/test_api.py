"""The Python API as a notebook uses it: `qfleet.train` in this very process, from a thread
that is not the main one (a real local Ray, started and shut down by the call), then
`qfleet.load_policy` and `qfleet.evaluate` on what it wrote."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

import qfleet
from qfleet.config import ConfigError
from qfleet.runs.checkpoints import CheckpointError
from tests.conftest import CONFIGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A short CartPole run from a dict config, trained on a worker thread."""
    import ray

    run_dir = tmp_path_factory.mktemp("api") / "run"
    config = yaml.safe_load((CONFIGS / "cartpole.yaml").read_text())
    config["stop"] = {"env_steps": 3000}
    results: dict[str, object] = {}

    def work() -> None:
        try:
            results["summary"] = qfleet.train(config, ["actors.num_actors=1"], run_dir=run_dir)
        except BaseException as err:  # reported below, on the test's thread
            results["error"] = err

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(300)
    assert not worker.is_alive(), "train() did not return"
    assert "error" not in results, results.get("error")
    assert not ray.is_initialized()  # the Ray it started is shut down again
    return results["summary"], run_dir  # type: ignore[return-value]


def test_train_from_a_thread_returns_the_summary(trained):
    summary, run_dir = trained
    assert summary["stopped_by"] == "env_steps" and summary["exit_code"] == 0
    assert summary["env_steps"] >= 3000 and summary["num_actors"] == 1
    assert Path(summary["checkpoint"]).parent == run_dir / "checkpoints"


def test_a_policy_acts_on_batches_of_observations(trained):
    _, run_dir = trained
    policy = qfleet.load_policy(run_dir)
    obs = np.random.default_rng(0).normal(size=(5, *policy.obs_shape)).astype(np.float32)
    q = policy.q_values(obs)
    assert q.shape == (5, policy.num_actions) == (5, 2) and np.isfinite(q).all()
    assert (policy.act(obs) == q.argmax(axis=1)).all()
    random = np.stack([policy.act(obs, epsilon=1.0) for _ in range(50)])
    assert set(np.unique(random)) == {0, 1}  # ε = 1: uniformly random actions
    with pytest.raises(ValueError, match="batch of observations of shape"):
        policy.q_values(obs[0])


def test_evaluate_runs_episodes_of_the_runs_env(trained):
    _, run_dir = trained
    result = qfleet.evaluate(run_dir, episodes=3, epsilon=0.0)
    assert result["env_id"] == "CartPole-v1" and len(result["episodes"]) == 3
    assert result["return_mean"] == pytest.approx(
        np.mean([e["ret"] for e in result["episodes"]]))
    assert result["protocol"] is None and result["epsilon"] == 0.0  # not an Atari env
    videos = qfleet.evaluate(run_dir, episodes=2, video_dir=run_dir.parent / "videos")
    assert [Path(v).name for v in videos["videos"]] == ["episode-001.mp4", "episode-002.mp4"]
    assert videos["epsilon"] == 0.001  # the run's eval.epsilon, as in training
    with pytest.raises(ConfigError, match="--protocol: evaluation protocols are for Atari"):
        qfleet.evaluate(run_dir, protocol="noop30")


def test_bad_input_raises_the_commands_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"learner\.lr"):
        qfleet.train({"stop": {"env_steps": 10}, "learner": {"lr": -1}})
    with pytest.raises(ConfigError, match="missing CONFIG"):
        qfleet.train(None)
    with pytest.raises(CheckpointError):
        qfleet.load_policy(tmp_path)
