"""One sweep trial: a whole fleet inside the trial's placement group, driven by Ray Tune.

`FleetTrial` is the Ray Tune edge of `Fleet`: each `step()` runs the fleet's loop until its
next greedy evaluation (or `STEP_S` at most, so a stop from the scheduler or a Ctrl-C is
heard between Atari evaluations), and reports it: the greedy return, the counters, and
the time attributes the schedulers read (`env_steps`, `train_time_s`, `evaluations`), all
continued across restores. Its checkpoints are qfleet's own
(`checkpoints/ckpt-*.pt`, with the replay when `replay.save_with_checkpoints` is on), so a
PBT exploit or a resumed sweep continues another trial's weights, optimizer, counters and
ε-schedule position, under this trial's config.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.util.placement_group import get_current_placement_group

from qfleet.driver.fleet import Fleet
from qfleet.envs import env_spec
from qfleet.runs.checkpoints import (
    CKPT_DIR,
    CheckpointError,
    find_checkpoint,
    is_replay_file,
    load_run_state,
    replay_name,
)
from qfleet.runs.record import StopReason
from qfleet.runs.storage import RunStorage
from qfleet.stats import Counters
from qfleet.sweep.space import trial_config

STEP_S = 5.0
"""The longest a step runs without an evaluation: Ray Tune's stop (early stopping, PBT,
Ctrl-C) waits for the step to return, and at the sweep's end gives a trial 10 s to stop."""
METRIC = "eval_return_mean"
ORIGIN_FILE = "origin.json"
"""In a Tune checkpoint: the trial it was taken from, its counters, evaluations and
training time (what the trial that continues it counts on from)."""


def trials_dir(sweep_dir: str) -> str:
    return f"{sweep_dir.rstrip('/')}/trials"


class FleetTrial(tune.Trainable):
    """Ray Tune's trainable: `setup` (config, env), `load_checkpoint` (the state to start
    from), `step` (start the fleet at the first; run it to the next evaluation),
    `save_checkpoint`, and `cleanup` (the fleet's end: final checkpoint and summary)."""

    def setup(self, config: dict[str, Any], *, base: dict[str, Any], sweep_dir: str,
              checkpoint_every: int = 1) -> None:
        """`checkpoint_every`: evaluations between Tune checkpoints (PBT: its perturbation
        interval, so that the checkpoints it copies are not rotated away meanwhile)."""
        self.cfg = trial_config(base, config)
        self.checkpoint_every = checkpoint_every
        self.spec = env_spec(self.cfg.env)
        self.storage = RunStorage(f"{trials_dir(sweep_dir)}/{self.trial_id}")
        self.resume: dict[str, Any] | None = None
        self.origin: dict[str, Any] = {}
        self.fleet: Fleet | None = None
        self.ended = False

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Where this trial continues from: its own checkpoint (a resumed sweep) or the one
        PBT copied from a better trial. Its weights, optimizer state and counters; the
        learning rate, ε and periods are this trial's config's."""
        try:
            find_checkpoint(checkpoint_dir)
        except CheckpointError:  # taken before the learner's first state: start fresh
            return
        self.resume = load_run_state(checkpoint_dir)
        origin = Path(checkpoint_dir) / ORIGIN_FILE
        self.origin = json.loads(origin.read_text()) if origin.is_file() else {}

    def step(self) -> dict[str, Any]:
        if self.fleet is None:
            self._start()
        assert self.fleet is not None
        fleet = self.fleet
        seen, deadline = fleet.evaluations, time.monotonic() + STEP_S
        fleet.advance(until=lambda: fleet.evaluations > seen or time.monotonic() > deadline)
        if fleet.record.stopped:  # the target, the budget, or a failure: the trial is done
            self.ended = True
            summary = fleet.end()
            return {**self._metrics(), "stopped_by": summary["stopped_by"],
                    "stop_message": summary["stop_message"], "done": True}
        # A checkpoint with evaluations: what PBT copies and a resumed sweep continues from.
        due = (fleet.evaluations > seen
               and self._evaluations() % self.checkpoint_every == 0)
        return {**self._metrics(), "should_checkpoint": due}

    def _start(self) -> None:
        if self.resume is not None:
            self._drop_checkpoints_beyond(int(self.resume["counters"]["updates"]))
        self.fleet = Fleet(self.cfg, self.spec, self.storage, command_start=time.monotonic(),
                           resume=self.resume, group=get_current_placement_group(),
                           trained_s=float(self.origin.get("train_time_s", 0.0)))
        self.fleet.prepare()
        self.fleet.start()

    def _drop_checkpoints_beyond(self, updates: int) -> None:
        """Checkpoints numbered (by updates) beyond the one this trial continues from would
        outrank the new ones in the rotation, which would delete each new one at once, and
        in `qfleet evaluate`: those a resumed trial wrote after its last Tune checkpoint,
        or all of a trial whose weights PBT replaced with a better trial's."""
        replaced = self.origin.get("from_trial") not in (None, self.trial_id)

        def drop(name: str) -> bool:
            if is_replay_file(name):
                return True  # a load takes only the one saved with its checkpoint
            number = name.removeprefix("ckpt-").removesuffix(".pt")
            return replaced or (number.isdigit() and int(number) > updates)

        self.storage.prune(CKPT_DIR, drop)

    def _evaluations(self) -> int:
        """Evaluations of this trial's lineage: PBT's clock carries on across exploits."""
        assert self.fleet is not None
        return int(self.origin.get("evaluations", 0)) + self.fleet.evaluations

    def _metrics(self) -> dict[str, Any]:
        assert self.fleet is not None
        fleet, c = self.fleet, self.fleet.counters
        scores = fleet.eval_scores
        mean = fleet.eval_mean
        # No metric before the first evaluation: ASHA and PBT wait for one, rather than
        # record a rung without it.
        return {**({} if mean is None else {METRIC: mean}),
                "eval_return_sem": scores.return_sem if scores else None,
                "human_normalized_score_mean": (scores.human_normalized_score_mean
                                                if scores else None),
                "evaluations": self._evaluations(), "train_time_s": fleet.trained_s,
                "env_steps": c.env_steps,
                "updates": c.updates, "episodes": c.episodes,
                "run_dir": str(self.storage),
                **{f"restored_{k}": v for k, v in self.origin.items()}}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """A qfleet checkpoint of the learner now (the newest written, once the fleet has
        ended), laid out as a run directory: `qfleet evaluate` reads it too."""
        if self.fleet is None:
            return
        record = self.fleet.record
        if not self.ended:
            self.fleet.checkpoint()  # else (a learner restarting) its newest one
        path, counters = record.written, record.written_counters
        clocks = {"evaluations": self._evaluations(), "train_time_s": self.fleet.trained_s}
        if path is None and self.resume is not None:  # none of its own yet: where it began
            path, counters = Path(self.resume["source"]), Counters.from_dict(
                self.resume["counters"])
            clocks = {k: self.origin.get(k, 0) for k in clocks}
        if path is None or counters is None or not path.is_file():
            return
        folder = Path(checkpoint_dir) / CKPT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        _link_or_copy(path, folder / path.name)
        replay = path.parent / replay_name(counters.updates)
        if replay.is_file():
            _link_or_copy(replay, folder / replay.name)
        (Path(checkpoint_dir) / ORIGIN_FILE).write_text(json.dumps({
            "from_trial": self.trial_id, "env_steps": counters.env_steps,
            "updates": counters.updates, **clocks}))

    def cleanup(self) -> None:
        """The scheduler stopped this trial (or PBT restarts it from another's checkpoint,
        or the sweep was interrupted): the fleet's end, with its final checkpoint and
        summary."""
        if self.fleet is not None and not self.ended:
            self.ended = True
            self.fleet.record.stop(StopReason.SWEEP, "ended by the sweep (its scheduler "
                                   "stopped or perturbed this trial, or it was interrupted)")
            self.fleet.end()


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another filesystem
        shutil.copy2(source, dest)
