"""Whole runs through the real path: `qfleet train` on a local Ray with real environments."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from qfleet.bench.common import run_processes, scalars
from tests.conftest import CONFIGS, ROOT, assert_one_line_error, qfleet, summary

pytestmark = pytest.mark.slow  # real `qfleet train` runs, each on its own local Ray


def video_frames(path) -> tuple[tuple[int, int], int]:
    """(height, width) and the number of frames of an mp4, decoded for real."""
    import av

    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    return (frames[0].height, frames[0].width), len(frames)


def scalar_steps(run_dir, tag: str) -> list[int]:
    return [e.step for e in scalars(run_dir, tag)]


def test_cartpole_reaches_475_through_two_actors(run_dir):
    result = qfleet("train", CONFIGS / "cartpole.yaml", "actors.num_actors=2",
                    "stop.time_s=480", "--run-dir", run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    s = summary(run_dir)
    assert s["stopped_by"] == "target_return", s
    assert s["eval_return_mean"] >= 475
    assert 0 < s["time_to_target_s"] < 480
    assert s["actor_nodes"] >= 1 and s["actor_restarts"] == 0
    assert "greedy eval (ε=0.001) over 10 episodes" in result.stdout
    assert "episode " in result.stdout and "return" in result.stdout
    assert scalar_steps(run_dir, "charts/episodic_return")
    assert scalar_steps(run_dir, "eval/return_mean")
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))

    evaluated = qfleet("evaluate", run_dir, "--episodes", "3", "--json", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert len(report["episodes"]) == 3
    assert report["return_mean"] > 100  # the trained greedy policy, not a random one (~20)


def test_spaceinvaders_smoke_checkpoints_and_evaluates(run_dir):
    result = qfleet("train", CONFIGS / "spaceinvaders-cpu.yaml", "learner.replay_ratio=null",
                    "actors.envs_per_actor=4", "stop.env_steps=2000", "replay.capacity=4000",
                    "replay.min_size=64", "learner.batch_size=8", "eval.episodes=1",
                    "env.max_episode_steps=200", "eval.video_every_s=1", "--run-dir", run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    s = summary(run_dir)
    assert s["env_steps"] >= 2000 and s["updates"] >= 1 and s["stopped_by"] == "env_steps"
    assert s["eval_return_mean"] is not None
    # The standard protocol, whatever the training env did (200-step episodes here).
    assert s["eval_protocol"] == "sticky" and s["eval_epsilon"] == 0.001
    assert s["human_normalized_score_mean"] == pytest.approx(
        (s["eval_return_mean"] - 148.0) / (1668.7 - 148.0))
    assert scalar_steps(run_dir, "eval/human_normalized_score")
    assert [e.value for e in scalars(run_dir, "eval/episode_frames")][-1] > 4 * 200
    videos = sorted((run_dir / "videos").glob("eval-*.mp4"))
    assert videos, result.stdout[-3000:]
    assert video_frames(videos[-1])[0] == (210, 160)  # the full screen, not the 84×84 input
    assert scalar_steps(run_dir, "charts/SPS")  # CleanRL's tag names
    assert scalar_steps(run_dir, "losses/td_loss") and scalar_steps(run_dir, "losses/q_values")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    assert "config/text_summary" in acc.Tags()["tensors"]  # the resolved config as text
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "SpaceInvaders" in text and "envs_per_actor: 4" in text
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    gif = acc.Images("eval/video")[-1]  # the filmed episode, as TensorBoard shows it
    assert gif.encoded_image_string[:6] == b"GIF89a" and (gif.height, gif.width) == (210, 160)

    evaluated = qfleet("evaluate", run_dir, "--episodes", "1", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "mean return" in evaluated.stdout and "human-normalized" in evaluated.stdout
    evaluated = qfleet("evaluate", run_dir, "--episodes", "2", "--protocol", "noop30",
                       "--video", run_dir / "eval-videos", "--json", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert report["protocol"] == "noop30" and report["epsilon"] == 0.001
    assert len(report["videos"]) == 2
    for episode, path in zip(report["episodes"], report["videos"], strict=True):
        assert episode["frames"] == 4 * episode["length"]
        # one frame per agent step, plus the first
        assert video_frames(path) == ((210, 160), episode["length"] + 1)
    assert_one_line_error(qfleet("evaluate", run_dir, "--protocol", "nope"), "eval.protocol")


def test_barebone_learns_once_per_streamed_transition(run_dir):
    result = qfleet("train", CONFIGS / "lunarlander-barebone.yaml", "stop.env_steps=3000",
                    "stop.target_return=null", "eval.episodes=1", "env.max_episode_steps=300",
                    "--run-dir", run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    s = summary(run_dir)
    # Every update consumed exactly one transition; the last chunks may be unconsumed.
    assert 1000 <= s["updates"] <= s["env_steps"]


def test_interrupt_checkpoints_and_resume_continues_counters(run_dir):
    cmd = [sys.executable, "-m", "qfleet.cli", "train", str(CONFIGS / "cartpole.yaml"),
           "stop.target_return=null", "stop.time_s=300", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("qfleet:"):
            break
    time.sleep(6)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    start = time.monotonic()
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130, rest[-3000:]
    assert time.monotonic() - start < 30
    first = summary(run_dir)
    assert first["stopped_by"] == "interrupted" and first["env_steps"] > 0

    # The same command again (a retried job) never writes over the run...
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = qfleet("train", CONFIGS / "cartpole.yaml", "--run-dir", run_dir, timeout=120)
    assert_one_line_error(again, "holds a run already (stopped by interrupted",
                          "--if-exists resume")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
    # ...and with --if-exists resume it continues from the newest checkpoint, as --resume.
    more = first["env_steps"] + 20_000
    args = ("train", CONFIGS / "cartpole.yaml", "--run-dir", run_dir, "--if-exists", "resume",
            f"stop.env_steps={more}", "stop.target_return=null")
    result = qfleet(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    second = summary(run_dir)
    assert second["replay_restored"] > 0  # the replay came back, not an empty one
    assert second["env_steps"] >= more
    assert second["updates"] >= first["updates"]
    # A run that ended on its budget: the retry succeeds at once, the run untouched.
    ended = qfleet(*args, timeout=120)
    assert ended.returncode == 0 and "already ended" in ended.stdout, ended.stderr
    assert summary(run_dir) == second
    # A checkpoint of another env or network shape is refused before anything starts.
    foreign = qfleet("train", "--resume", run_dir, "env.id=LunarLander-v3", timeout=120)
    assert_one_line_error(foreign, "does not match env 'LunarLander-v3'")
    # TensorBoard curves continue where they were: one run, steps past the first run's end.
    steps = scalar_steps(run_dir, "charts/episodic_return")
    assert min(steps) < first["env_steps"] < max(steps)


def test_repeated_nonfinite_losses_stop_the_run_with_a_good_checkpoint(run_dir):
    import torch

    env = {**os.environ, "QFLEET_TEST_NAN_AFTER_UPDATES": "50"}
    cmd = [sys.executable, "-m", "qfleet.cli", "train", str(CONFIGS / "cartpole.yaml"),
           "stop.time_s=120", "learner.max_nonfinite=20", "--run-dir", str(run_dir)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "skipped for a NaN/inf loss" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("qfleet: error: ") and "NaN/inf losses in a row" in last
    assert "Traceback" not in result.stdout + result.stderr
    s = summary(run_dir)
    assert s["stopped_by"] == "nonfinite_loss" and s["updates"] == 50
    state = torch.load(s["checkpoint"], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["network"].values())


def test_actor_and_evaluator_killed_with_sigkill_are_restarted_and_the_run_solves(run_dir):
    # The slower-learning settings cartpole.yaml had before 2026-11-26 (about 2,000 updates
    # or more to solve), and the kills right after the first evaluation (about 500 updates
    # in): the run cannot solve before both kills land.
    cmd = [sys.executable, "-m", "qfleet.cli", "train", str(CONFIGS / "cartpole.yaml"),
           "stop.time_s=400", "learner.n_step=5", "learner.target_update_every=100",
           "learner.publish_every=5", "learner.lr=2.3e-3", "learner.batch_size=64",
           "actors.apex_epsilon=0.4", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "greedy eval" in line:  # the evaluator is up and has scored once
            break
    # Both are up by now: the actor fed the learner, the evaluator scored.
    actors = run_processes(proc.pid, "actor")  # this run's own, never another run's
    evaluators = run_processes(proc.pid, "evaluator")
    assert actors and evaluators, "no actor or evaluator process found"
    os.kill(actors[0], signal.SIGKILL)
    os.kill(evaluators[0], signal.SIGKILL)
    rest = proc.stdout.read()
    proc.wait(timeout=400)
    assert proc.returncode == 0, rest[-3000:]
    assert "died" in rest and "restarting it" in rest
    assert "evaluator lost" in rest
    s = summary(run_dir)
    assert s["actor_restarts"] >= 1
    assert s["stopped_by"] == "target_return" and s["eval_return_mean"] >= 475


def test_run_dir_on_a_storage_uri_is_mirrored_and_evaluable(tmp_path):
    remote = tmp_path / "bucket" / "runs" / "cp"
    uri = f"file://{remote}"
    result = qfleet("train", CONFIGS / "cartpole.yaml", "stop.env_steps=3000",
                    "--run-dir", uri)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    s = summary(remote)
    assert s["run_uri"] == uri and s["env_steps"] >= 3000
    assert list(remote.glob("events.out.tfevents.*"))
    assert (remote / "config.yaml").is_file()
    assert list((remote / "checkpoints").glob("ckpt-*.pt"))
    evaluated = qfleet("evaluate", uri, "--episodes", "2", "--json", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert len(json.loads(evaluated.stdout.strip().splitlines()[-1])["episodes"]) == 2


def test_an_unusable_storage_uri_is_refused(tmp_path):
    result = qfleet("train", CONFIGS / "cartpole.yaml", "--run-dir", "nosuchfs://x/y")
    assert result.returncode == 2
    assert "cannot open storage URI" in result.stderr and "Traceback" not in result.stderr


def test_a_killed_driver_resumes_with_the_replay_of_its_last_checkpoint(run_dir):
    cmd = [sys.executable, "-m", "qfleet.cli", "train", str(CONFIGS / "cartpole.yaml"),
           "stop.target_return=null", "stop.time_s=300", "log.checkpoint_every_updates=300",
           "replay.save_with_checkpoints=true", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("replay-*.pt")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.5)
    time.sleep(1.0)
    family = psutil.Process(proc.pid).children(recursive=True)  # its Ray, workers and all
    os.killpg(proc.pid, signal.SIGKILL)  # no goodbye: driver and its Ray die at once
    proc.wait(timeout=30)
    for leftover in family:  # any that left the process group (not `ray stop`: that would
        with contextlib.suppress(psutil.Error):  # end every other Ray on this machine too)
            leftover.kill()
    assert not (run_dir / "summary.json").exists()
    result = qfleet("train", "--resume", run_dir, "stop.env_steps=1", "stop.time_s=null")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary(run_dir)["replay_restored"] > 0
