"""`qfleet bench` runs and reports its figures (benchmarks: figures are printed, not judged,
except the replay's memory bound, which is exact arithmetic on allocated tensors)."""

import json
import shutil

import pytest

from tests.conftest import CONFIGS, assert_one_line_error, qfleet

pytestmark = pytest.mark.slow  # each benchmark runs for real


def last_json(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_replay_stores_an_atari_transition_in_under_8_kib(tmp_path):
    saved = tmp_path / "replay.json"
    report = last_json(qfleet("bench", "--save", saved, "replay", "--seconds", "1", "--json",
                              timeout=300))
    # One 84x84 frame (7,056 bytes) a transition and its indices: never two whole stacks.
    assert 84 * 84 <= report["bytes_per_transition"] <= 8192
    assert 1e3 < report["insert_transitions_per_s"] < 1e9
    assert 1e3 < report["sample_transitions_per_s"] < 1e9
    # --save: the same result, with what it takes to publish it.
    published = json.loads(saved.read_text())
    assert published["result"] == report and published["benchmark"] == "replay"
    assert published["command"].startswith("qfleet bench replay --seconds 1")
    assert "--save" not in published["command"]
    assert published["machine"]["cpus"] >= 1 and published["qfleet_version"]


# Sanity bounds, not targets: rates a 2-core machine and a GPU box both land inside, and
# that a unit slip (per ms for per s, a lost batch factor) or a stalled loop falls out of.
@pytest.mark.parametrize(("which", "bounds"), [
    ("actors", {"actor_steps_per_s": (10, 1e6), "bare_env_steps_per_s": (10, 1e6),
                "ratio": (0.01, 2.0)}),
    ("learner", {"learner_updates_per_s": (0.5, 1e5), "bare_updates_per_s": (0.5, 1e5),
                 "ratio": (0.05, 3.0)}),
    ("envs", {"vector_steps_per_s": (10, 1e6), "single_env_steps_per_s": (10, 1e6)}),
    ("pipeline", {"transitions_per_s": (10, 1e7), "actor_nodes": (1, 1)}),
])
def test_benchmarks_report_figure_and_limit(which, bounds):
    result = qfleet("bench", which, "--seconds", "1", "--json", timeout=300)
    report = last_json(result)
    assert report["bench"] == which
    for key, (low, high) in bounds.items():
        assert low <= report[key] <= high, (key, report[key])
    if "ratio" in bounds:  # ours over the bare loop: the first two figures above
        ours, bare = (report[k] for k in list(bounds)[:2])
        assert report["ratio"] == pytest.approx(ours / bare, rel=1e-6)
    assert len(result.stdout.strip().splitlines()) >= 2  # human lines before the JSON


def test_fleet_measures_the_real_fleet_against_the_bare_envs():
    """`bench fleet` on cartpole.yaml (1 actor, replay ratio 4, 2 cores): the driver's own
    fleet, a window of its stats, then the bare env on the actor's CPU."""
    result = qfleet("bench", "fleet", "--config", CONFIGS / "cartpole.yaml", "--seconds", "4",
                    "--bare-seconds", "2", "--json", timeout=300)
    report = last_json(result)
    assert report["bench"] == "fleet" and report["actors"] == 1 == report["actor_nodes"]
    assert report["actors_acting_on"] == ["cpu"] and report["learner_device"] == "cpu"
    assert report["window_s"] >= 2.5  # between the driver's 1 s samples around the window
    # The learner throttles the actor to the config's ratio; the figures agree.
    assert report["replay_ratio_setting"] == 4.0
    assert report["replay_ratio_held"] == pytest.approx(4.0, rel=0.2)
    assert report["trained_samples_per_s"] == pytest.approx(128 * report["updates_per_s"])
    assert 0.01 < report["env_steps_ratio"] < 1.5
    assert report["env_steps_ratio"] == pytest.approx(
        report["env_steps_per_s"] / report["bare_env_steps_per_s_per_actor"])
    assert report["policy_lag_median"] is not None and report["policy_lag_median"] >= 0
    roles = report["host_uss_mib_by_role"]
    assert {"driver", "learner", "actor"} <= set(roles) and report["host_uss_mib"] > 100
    if shutil.which("nvidia-smi") is None:
        assert report["gpu_busy_fraction"] is None
    assert "learner_alone_updates_per_s" not in report  # CartPole: no Atari learner bench


def test_inference_compares_acting_per_actor_with_a_central_server():
    report = last_json(qfleet("bench", "inference", "--seconds", "2", "--actors", "2",
                              "--json", timeout=300))
    assert report["device"] == "cpu" and report["clients"] == 2
    for design in ("per_actor", "central"):
        r = report[design]
        # Each call is one batch of 8 Nature-CNN forwards: milliseconds, not micro or whole
        # seconds; the calls of 2 clients over the window agree with their latency.
        assert 0.05 < r["latency_ms_median"] < 2000, r
        assert r["calls_per_s"] <= 2 * 1e3 / r["latency_ms_median"] * 1.5, r
    assert 1.0 <= report["central"]["requests_per_server_batch"] <= 2.0
    ratio = report["per_actor"]["calls_per_s"] / report["central"]["calls_per_s"]
    assert report["per_actor_over_central"] == pytest.approx(ratio)
    assert report["winner"] == ("per_actor" if ratio >= 1 else "central")


def test_atari100k_scores_a_game_beside_the_published_ones():
    """One short real run of configs/atari-100k.yaml on Pong under the protocol: the table
    carries DER's and BBF's cited scores and the run's human-normalized score."""
    report = last_json(qfleet(
        "bench", "atari100k", "--games", "Pong", "--seeds", "1", "stop.env_steps=300",
        "eval.episodes=2", "eval.max_episode_steps=200", "replay.min_size=100",
        "learner.replay_ratio=1", "--json", timeout=400))
    assert report["protocols"] == ["atari100k/noop30"] and report["comparable"] is True
    (pong,) = report["games"]
    (run,) = report["runs"]
    assert pong["DER"] == -19.3 and pong["BBF"] == 16.4
    assert (pong["random"], pong["human"]) == (-20.7, 14.6)
    assert run["eval_episodes"] == 2 and 300 <= run["env_steps"] < 400
    assert -21 <= pong["mean"] <= 21 and pong["mean"] == run["eval_return_mean"]
    assert pong["human_normalized"] == pytest.approx((pong["mean"] + 20.7) / 35.3)
    assert report["iqm_human_normalized"] == pytest.approx(pong["human_normalized"])


def test_unknown_benchmark_and_options_a_benchmark_does_not_take():
    assert_one_line_error(qfleet("bench", "gpu"), "No such command 'gpu'")
    assert_one_line_error(qfleet("bench", "learner", "--actors", "3"), "--actors")
    assert_one_line_error(qfleet("bench", "learner", "--device", "tpu"), "'--device'")
    assert_one_line_error(qfleet("bench", "fleet", "--config", "nowhere.yaml"), "nowhere.yaml")
    assert_one_line_error(qfleet("bench", "atari100k", "--games", "Pong,Tetris"),
                          "'Tetris' is not an Atari-57 game")
    assert_one_line_error(qfleet("bench", "fleet", "--config", CONFIGS / "cartpole.yaml",
                                 "actors.device=tpu"), "actors.device")


def test_learning_curves_of_qfleet_and_sb3_on_one_budget(tmp_path):
    """`bench learning --against sb3 --beside`: both run for real on the same budget, at
    the same time on cores of their own, and each reports a curve of greedy evaluations
    (the figures are the benchmark's, not asserted)."""
    picture = tmp_path / "curve.png"
    result = qfleet("bench", "learning", "--env", "CartPole-v1", "--seconds", "25",
                    "--points", "3", "--episodes", "2", "--against", "sb3", "--plot", picture,
                    "--first-seed", "3", "--beside", "actors.num_actors=1", "--json",
                    timeout=400)
    report = last_json(result)
    assert report["first_seed"] == 3 and "qfleet seed 3:" in result.stdout
    assert report["beside"] is True
    for name in ("qfleet", "sb3"):
        (run,) = report["runs"][name]
        # Stopped by its 25 s budget: start-up and evaluations on a loaded machine aside,
        # nothing runs on past it (60.2 s once beside another test process).
        assert run["env_steps"] > 0 and run["wall_s"] < 120, report
        assert all(0 < p["seconds"] <= run["wall_s"] for p in run["curve"])
    # On one core of two, qfleet's start-up takes most of 25 s; SB3 evaluates from 8 s on.
    assert report["runs"]["sb3"][0]["curve"], report
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_refuses_what_it_cannot_run():
    assert_one_line_error(qfleet("bench", "learning", "--env", "Acrobot-v1"),
                          "no shipped config for 'Acrobot-v1'")
    assert_one_line_error(qfleet("bench", "learning", "--against", "rllib"),
                          "--against: expected sb3")
    # Refused before any run spends its budget: SB3's zoo has no entry for this env.
    assert_one_line_error(qfleet("bench", "learning", "--env", "LunarLander-v3", "--config",
                                 "configs/lunarlander.yaml", "--against", "sb3"),
                          "no rl-zoo DQN hyperparameters for 'LunarLander-v3'")
