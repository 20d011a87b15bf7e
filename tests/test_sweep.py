"""`qfleet tune` on a real local Ray: CartPole sweeps with real fleets, each trial in its own
placement group. A trial's actors are placed only in its group's bundles: were they not,
the groups would hold every CPU of the local Ray and the actors would never start."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from qfleet.config import load_config
from tests.conftest import CONFIGS, ROOT, assert_one_line_error, qfleet

pytestmark = pytest.mark.slow
T = TypeVar("T")

# The trials' pace is pinned here, not taken from cartpole.yaml: the interrupt must land
# before a trial's budget is spent, and PBT needs perturbation points within it.
SHORT = ["actors.num_actors=1", "actors.envs_per_actor=8", "actors.chunk_steps=8",
         "learner.batch_size=64",
         "stop.target_return=null", "stop.time_s=null",
         "eval.every_s=1", "eval.episodes=3", "learner.start_timeout_s=120"]


def results(sweep_dir: Path) -> dict[str, list[dict]]:
    """Each trial's reported results, in order (Tune's result.json lines)."""
    out = {}
    for file in sorted((sweep_dir / "tune").glob("*/result.json")):
        text = file.read_text()
        complete = text[:text.rfind("\n") + 1]  # not a line being written
        out[file.parent.name] = [json.loads(line) for line in complete.splitlines()]
    return out


def tune_until(args: list[Any], ready: Callable[[], T], within_s: float, what: str
               ) -> tuple[T, subprocess.CompletedProcess[str]]:
    """`qfleet tune ARGS` until `ready()` gives something, then Ctrl-C (SIGINT) to it."""
    proc = subprocess.Popen([sys.executable, "-m", "qfleet.cli", "tune", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + within_s
        while not (found := ready()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"no {what} within {within_s:g} s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    return found, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_a_two_trial_sweep_interrupted_then_resumed_ends_with_summaries_and_best_yaml(
        tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("learner.lr: {loguniform: [1.0e-3, 3.0e-3]}\n"
                     "learner.target_update_every: {choice: [50, 100]}\n")
    out = tmp_path / "sweep"
    # Ctrl-C once the first trial has a checkpoint
    _, stopped = tune_until([CONFIGS / "cartpole.yaml", sweep, "--trials", "2", "--run-dir",
                             out, *SHORT, "stop.env_steps=25000"],
                            lambda: list((out / "tune").glob("*/checkpoint_*")), 240,
                            "a trial checkpoint")
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr

    done = qfleet("tune", CONFIGS / "cartpole.yaml", sweep, "--trials", "2", "--run-dir", out,
                  "--resume", *SHORT, "stop.env_steps=25000", timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = sorted((out / "trials").iterdir())
    assert len(trials) == 2
    params = {}
    for trial in trials:
        summary = json.loads((trial / "summary.json").read_text())
        assert summary["stopped_by"] == "env_steps" and summary["env_steps"] >= 25000
        assert list(trial.glob("events.out.tfevents.*")) and list(trial.glob("checkpoints/*"))
        params[trial.name] = load_config(trial / "config.yaml").learner.lr
    # The interrupted trial continued from its own checkpoint, counters and all.
    resumed = [(trial, rows) for trial, rows in results(out).items()
               if any(r.get("restored_from_trial") == trial for r in rows)]
    assert resumed, results(out)
    trial, rows = resumed[0]
    first = next(r for r in rows if r.get("restored_from_trial") == trial)
    assert first["env_steps"] >= first["restored_env_steps"] > 0
    assert first["updates"] >= first["restored_updates"] > 0
    # The ranked results: trials.csv, and best.yaml ready for `qfleet train`.
    lines = (out / "trials.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("rank,trial,eval_return_mean")
    best = load_config(out / "best.yaml")
    assert best.learner.lr in params.values() and best.actors.num_actors == 1
    printed = next(line for line in done.stdout.splitlines() if line.startswith('{"sweep_dir"'))
    assert json.loads(printed)["best"]["trial"] in params


def test_pbt_copies_a_checkpoint_into_another_trial_which_continues_from_its_counters(
        tmp_path):
    # PBT scores a trial only at its own perturbation points and exploits only the trial at
    # hand, so no fixed budget is sure to see an exploit (30k env steps once gave none): the
    # sweep runs until the first exploit's result is written, then is interrupted.
    sweep = tmp_path / "pbt.yaml"
    sweep.write_text("learner.lr: {loguniform: [1.0e-4, 3.0e-3]}\n"
                     "learner.target_update_every: {choice: [25, 50, 100]}\n")
    out = tmp_path / "pbt"
    exploits, stopped = tune_until(
        [CONFIGS / "cartpole.yaml", sweep, "--trials", "2", "--scheduler", "pbt",
         "--perturb-every", "2", "--run-dir", out, *SHORT, "eval.every_s=0.5",
         "stop.env_steps=1000000"], lambda: exploited(results(out)), 400, "a PBT exploit")
    assert stopped.returncode == 130, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert len(results(out)) == 2
    trial, first = exploits[0]  # the receiver's first result from the donor's checkpoint
    # It continued the donor's counters (a fresh fleet counts from zero).
    assert first["updates"] >= first["restored_updates"] > 0
    assert first["env_steps"] >= first["restored_env_steps"] > 0
    # Explored inside the sweep's spaces; n-step and network untouched.
    config = first["config"]
    assert 1e-4 <= config["learner.lr"] <= 3e-3
    assert config["learner.target_update_every"] in (25, 50, 100)
    receiver = load_config(out / "trials" / trial / "config.yaml")
    assert receiver.learner.n_step == load_config(CONFIGS / "cartpole.yaml").learner.n_step


def exploited(by_trial: dict[str, list[dict]]) -> list[tuple[str, dict]]:
    """(receiver, its first result) for each result restored from another trial."""
    return [(trial, r) for trial, rows in by_trial.items() for r in rows
            if r.get("restored_from_trial") not in (None, trial)]


def test_a_bad_sweep_file_exits_2_with_one_line(tmp_path):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text("learner.n_step: {choice: [3, 5]}\n")
    assert_one_line_error(
        qfleet("tune", CONFIGS / "cartpole.yaml", sweep, "--scheduler", "pbt",
               "--run-dir", tmp_path / "s"),
        "learner.n_step cannot change mid-run")
    sweep.write_text("learner.lr: {loguniform: [1.0e-4]}\n")
    assert_one_line_error(qfleet("tune", CONFIGS / "cartpole.yaml", sweep,
                                 "--run-dir", tmp_path / "s"),
                          "loguniform needs [low, high]")
    assert not (tmp_path / "s").exists()  # refused before anything started
