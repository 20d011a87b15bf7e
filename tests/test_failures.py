"""Every ending is clean: a lost learner comes back from its checkpoint, a part that keeps
failing ends the run with its own error, signals and budgets end it with a checkpoint and
a summary. Real runs of `qfleet train` on a local Ray, real SIGKILLs of the run's own
processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qfleet.bench.common import run_processes, scalars
from tests.conftest import CONFIGS, ROOT, qfleet, summary

pytestmark = pytest.mark.slow  # kills and failures of real runs


def start(run_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "qfleet.cli", "train",
                             str(CONFIGS / "cartpole.yaml"), *args, "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def kill_learner_after_a_checkpoint(proc: subprocess.Popen[str], run_dir: Path,
                                    not_before_s: float) -> None:
    """SIGKILL the run's own learner once a checkpoint exists and `not_before_s` passed."""
    started = time.monotonic()
    while (time.monotonic() - started < not_before_s
           or not list((run_dir / "checkpoints").glob("ckpt-*.pt"))):
        assert proc.poll() is None, "the run ended before the kill"
        assert time.monotonic() - started < 240, "no checkpoint was ever written"
        time.sleep(0.5)
    learners = run_processes(proc.pid, "learner")
    assert learners, "no learner process among the run's own"
    os.kill(learners[0], signal.SIGKILL)


def test_a_killed_learner_restarts_from_its_checkpoint_and_the_run_still_solves(run_dir):
    proc = start(run_dir, "stop.time_s=400", "log.checkpoint_every_updates=300")
    # At the first checkpoint (~300 updates) CartPole is far from solved, however fast
    # this machine is; the scenario (a kill 15 s in) is the same with more updates.
    kill_learner_after_a_checkpoint(proc, run_dir, not_before_s=0)
    out, err = proc.communicate(timeout=500)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "restarting it from checkpoint ckpt-" in out
    assert "learner back on cpu" in out
    s = summary(run_dir)
    assert s["learner_restarts"] >= 1 and s["stopped_by"] == "target_return"
    assert s["eval_return_mean"] >= 475
    # Only chunks in flight die with a learner: per restart, at most each actor's bound.
    in_flight = yaml.safe_load((run_dir / "config.yaml").read_text())["actors"]["max_in_flight"]
    assert s["chunks_dropped"] <= s["num_actors"] * in_flight * s["learner_restarts"]
    restarts = scalars(run_dir, "fleet/learner_restarts")
    assert restarts and restarts[-1].value >= 1
    steps = [e.step for e in sorted(scalars(run_dir, "learner/updates"),
                                    key=lambda e: e.wall_time)]
    assert steps == sorted(steps)  # the fleet's env steps never went back
    assert "Traceback" not in out + err


def test_a_learner_lost_past_its_restart_budget_ends_the_run_with_a_summary(run_dir):
    proc = start(run_dir, "stop.target_return=null", "stop.time_s=300",
                 "log.checkpoint_every_updates=200", "learner.max_restarts=0")
    kill_learner_after_a_checkpoint(proc, run_dir, not_before_s=0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert err.strip().splitlines()[-1].startswith("qfleet: error: the learner was lost")
    assert "learner.max_restarts=0" in err
    s = summary(run_dir)
    assert s["stopped_by"] == "learner_lost" and s["exit_code"] == 1
    assert s["checkpoint"] and Path(s["checkpoint"]).is_file()  # the newest one it had
    assert "Traceback" not in out + err


def test_an_env_that_raises_at_every_reset_ends_the_run_with_its_own_error(run_dir):
    started = time.monotonic()
    result = qfleet("train", CONFIGS / "cartpole.yaml", "env.id=tests.envs:BrokenReset-v0",
                    "actors.max_restarts=2", "--run-dir", run_dir, timeout=300)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    # Ended by the actors' restart budget (seconds apart), not by a start timeout (600 s);
    # the margin is for a loaded machine (about 30 s alone, 61 s beside another test run).
    assert took < 180, f"took {took:.0f} s"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("qfleet: error: actor ")
    assert "RuntimeError: the emulator refused to reset" in last  # the env's own words
    assert "restarting it in 0.5 s" in result.stdout and "in 1.0 s" in result.stdout
    assert summary(run_dir)["stopped_by"] == "actor_failures"
    assert "Traceback" not in result.stdout + result.stderr


def test_a_budget_spent_while_a_long_evaluation_runs_ends_cleanly(run_dir):
    result = qfleet("train", CONFIGS / "cartpole.yaml", "stop.target_return=null",
                    "stop.env_steps=30000", "eval.every_s=0.2", "eval.episodes=200",
                    "--run-dir", run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    s = summary(run_dir)
    assert s["stopped_by"] == "env_steps" and s["eval_return_mean"] is not None
    assert "qfleet: done: env-step budget spent" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-2])["stopped_by"] == "env_steps"
    # stop.env_steps caps what the learner takes in: past it, chunks are answered and
    # dropped, so the run overshoots by at most the one chunk that crossed it, and the stop
    # line and summary.json give the same count.
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())["actors"]
    chunk = cfg["chunk_steps"] * cfg["envs_per_actor"]
    assert 30_000 <= s["env_steps"] < 30_000 + chunk
    assert f"({s['env_steps']:,} of stop.env_steps=30,000)" in s["stop_message"]
    assert f"({s['env_steps']:,} of stop.env_steps=30,000)" in result.stdout


def test_sigterm_writes_a_final_checkpoint_and_exits_143(run_dir):
    proc = start(run_dir, "stop.target_return=null", "stop.time_s=300")
    while not run_processes(proc.pid, "actor"):
        assert proc.poll() is None
        time.sleep(0.5)
    time.sleep(5)
    proc.send_signal(signal.SIGTERM)  # what `ray job stop` and Kubernetes send
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:] + err[-3000:]
    s = summary(run_dir)
    assert s["stopped_by"] == "terminated" and Path(s["checkpoint"]).is_file()
    assert err.strip().splitlines()[-1] == "qfleet: stopped: terminated (SIGTERM)"
    assert f"checkpoint written: {s['checkpoint']}" in out


def test_the_chaos_benchmark_kills_whole_nodes_and_the_run_survives_them():
    """Two worker nodes of a local multi-node Ray; the learner's node and then another
    killed (each replaced 5 s later): both survived, nothing lost beyond the newest
    checkpoint, and the target reached after the last kill."""
    result = qfleet("bench", "chaos", "--nodes", "2", "--seconds", "90", "--kills", "2",
                    "--replace-s", "5", "--checkpoint-every", "200", "--json", timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (run,) = report["runs"]
    assert run["kind"] == "node" and [k["victim"] for k in run["kills"]] in (
        ["learner", "actor"], ["actor", "learner"])
    assert run["kills_survived"] == 2 and run["exit_code"] == 0, run["last_lines"]
    assert run["learner_restarts"] >= 1 and run["env_steps_monotone"]
    (learner_kill,) = [k for k in run["kills"] if k["victim"] == "learner"]
    assert learner_kill["resumed_s"] is not None and learner_kill["noticed_s"] is not None
    assert run["within_checkpoint"] and report["all_survived"]
    assert run["reached_target"], run
    assert "Traceback" not in result.stderr


def test_sigterm_to_the_process_group_during_the_final_evaluation_still_writes_the_summary(
        run_dir):
    """What `timeout`, a terminal's job control and some schedulers do: SIGTERM to the
    whole process group, the embedded Ray's processes included, while the final
    evaluation runs. The driver does not wait on the dead Ray: summary.json is written and
    the process ends within 20 s."""
    cmd = [sys.executable, "-m", "qfleet.cli", "train", str(CONFIGS / "cartpole.yaml"),
           "env.id=tests.envs:Treadmill", "stop.env_steps=2000", "stop.target_return=null",
           "eval.every_s=1000", "eval.max_episode_steps=100000000", "eval.final_time_s=300",
           "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        before = []
        for line in proc.stdout:
            before.append(line)
            if line.startswith("final evaluation: "):
                break
        else:
            raise AssertionError("".join(before)[-3000:])
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGTERM)
        sent = time.monotonic()
        rest, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "final evaluation abandoned" in rest, rest[-3000:]
    assert took < 20, (took, rest[-3000:])
    s = summary(run_dir)
    assert s["stopped_by"] == "env_steps" and Path(s["checkpoint"]).is_file()
    assert s["eval_return_mean"] is None


def test_the_final_evaluation_ends_at_its_time_limit_and_counts_what_it_cut(run_dir):
    """An agent whose episodes never end (a barely trained Breakout agent that never
    presses FIRE): the final evaluation stops at eval.final_time_s, says so, and the summary
    counts the episodes it cut instead of averaging them in."""
    started = time.monotonic()
    result = qfleet("train", CONFIGS / "cartpole.yaml", "env.id=tests.envs:Treadmill",
                    "stop.env_steps=2000", "stop.target_return=null", "eval.every_s=1000",
                    "eval.max_episode_steps=100000000", "eval.final_time_s=3",
                    "--run-dir", run_dir, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    episodes = yaml.safe_load((run_dir / "config.yaml").read_text())["eval"]["episodes"]
    assert "final evaluation: " in result.stdout and "3 s at most" in result.stdout
    assert f"{episodes} of {episodes} episodes cut short" in result.stdout
    s = summary(run_dir)
    assert s["eval_episodes_cut"] == episodes and s["eval_return_mean"] is None
    assert time.monotonic() - started < 120
