"""The evaluation protocol, scores and videos, in-process on real environments."""

from __future__ import annotations

import io
import time

import pytest

from qfleet.atari_scores import SCORES, human_normalized
from qfleet.config import Config, load_config
from qfleet.envs import env_spec
from qfleet.evaluation.evaluator import Evaluator, Scores, evaluation_env
from qfleet.networks import build_q_network
from qfleet.transitions import Episode
from tests.conftest import CONFIGS


def config(**sections: dict) -> Config:
    return Config.model_validate(sections)


def test_the_atari_57_table_and_human_normalized_scores():
    assert len(SCORES) == 57
    assert human_normalized("space_invaders", 148.0) == 0.0
    assert human_normalized("space_invaders", 1668.7) == pytest.approx(1.0)
    assert human_normalized("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("not_a_game", 10.0) is None


@pytest.mark.parametrize(("protocol", "sticky", "noops"), [("sticky", 0.25, 0),
                                                           ("noop30", 0.0, 30)])
def test_an_atari_protocol_overrides_how_the_env_trained(protocol, sticky, noops):
    c = config(env={"id": "SpaceInvadersNoFrameskip-v4", "episodic_life": True,
                    "max_episode_steps": 200, "noop_max": 7},
               eval={"protocol": protocol})
    env = evaluation_env(c)
    assert (env.sticky_actions, env.noop_max) == (sticky, noops)
    assert not env.episodic_life and env.max_episode_steps == 27_000  # 108,000 frames
    assert evaluation_env(config(env={"id": "CartPole-v1"})) == config().env


def test_scores_carry_their_protocol_standard_error_and_frames():
    c = config(env={"id": "ALE/Pong-v5"}, eval={"protocol": "noop30"})
    result = Scores.of(c, [Episode(-21.0, 800, True), Episode(-19.0, 900, True)],
                       0.001).to_dict()
    assert (result["protocol"], result["epsilon"]) == ("noop30", 0.001)
    assert result["return_mean"] == -20.0 and result["return_sem"] == pytest.approx(1.0)
    assert result["human_normalized_score_mean"] == pytest.approx((-20.0 + 20.7) / 35.3)
    assert [e["frames"] for e in result["episodes"]] == [3200, 3600]
    cartpole = Scores.of(config(), [Episode(500.0, 500, False)], 0.0).to_dict()
    assert cartpole["protocol"] is None and cartpole["human_normalized_score_mean"] is None
    assert cartpole["return_std"] is None and cartpole["return_sem"] is None  # one episode
    assert cartpole["episodes"][0]["frames"] == 500


def evaluator(c: Config) -> tuple[Evaluator, dict]:
    spec = env_spec(c.env)
    return Evaluator(c, spec), build_q_network(c, spec).state_dict()


def test_episodes_are_capped_even_where_the_env_has_no_time_limit():
    c = config(env={"id": "tests.envs:Corridor", "kwargs": {"length": 10_000}},
               eval={"max_episode_steps": 25})
    ev, weights = evaluator(c)
    episodes = ev.evaluate(weights, 3, epsilon=0.0)
    assert [(e.length, e.terminated) for e in episodes] == [(25, False)] * 3


def test_an_evaluation_past_its_time_limit_returns_its_episodes_cut_short():
    c = config(env={"id": "tests.envs:Treadmill"}, eval={"max_episode_steps": 10**9})
    ev, weights = evaluator(c)
    started = time.monotonic()
    episodes = ev.evaluate(weights, 3, epsilon=0.0, time_limit_s=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert len(episodes) == 3 and all(e.cut and not e.terminated for e in episodes)
    assert all(e.length > 0 for e in episodes)
    # Without a limit, nothing is cut: the step cap ends them.
    capped = evaluator(config(env={"id": "tests.envs:Treadmill"},
                              eval={"max_episode_steps": 7}))[0].evaluate(weights, 2, 0.0)
    assert [(e.length, e.cut) for e in capped] == [(7, False)] * 2


def test_a_rendered_env_is_filmed_frame_for_frame():
    import av

    ev, weights = evaluator(config(env={"id": "CartPole-v1"}))
    recording = ev.record(weights, epsilon=0.0)
    assert recording.complete and recording.gif[:6] == b"GIF89a"
    with av.open(io.BytesIO(recording.mp4)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == recording.episode.length + 1
    assert (frames[0].height, frames[0].width) == (400, 600)


def test_the_atari_camera_plays_the_agents_episode():
    """The full-resolution twin sees the same episode as the agent's 84×84 env: the video
    ends where the agent's episode ends, with the same number of steps."""
    c = config(env={"id": "ALE/Breakout-v5"}, eval={"max_episode_steps": 400})
    ev, weights = evaluator(c)
    recording = ev.record(weights, epsilon=0.5)  # varied actions: sticky and random draws
    assert recording.complete
    import av

    with av.open(io.BytesIO(recording.mp4)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == recording.episode.length + 1
    assert (frames[0].height, frames[0].width) == (210, 160)


@pytest.mark.parametrize(("config", "overrides", "expected"), [
    ("atari-100k.yaml", [], "atari100k"),
    ("spaceinvaders-cpu.yaml", ["env.noop_max=0"], "sticky"),
    ("spaceinvaders-cpu.yaml", [],  # v5's sticky actions and 30 no-ops: no one protocol
     "sticky_actions=0.25, noop_max=30, life_loss_ends_episode=False, "
     "max_episode_steps=None"),
    ("spaceinvaders-cpu.yaml", ["env.sticky_actions=0"], "noop30"),
    ("atari-100k.yaml", ["env.max_episode_steps=null"],
     "sticky_actions=0, noop_max=30, life_loss_ends_episode=True, max_episode_steps=None"),
    ("cartpole.yaml", [], None),
])
def test_the_training_protocol_is_named(config, overrides, expected):
    from qfleet.evaluation.evaluator import training_protocol

    assert training_protocol(load_config(CONFIGS / config, overrides)) == expected
