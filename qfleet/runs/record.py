"""The run record: what a run leaves behind, and why it ended.

Checkpoints, replay saves, the storage mirror and `summary.json` are written here, and
`stop()` is the one place where the reason a run ends (`stopped_by`) and its exit code are
decided: the first reason given wins.
"""

from __future__ import annotations

import json
import shutil
import time
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from qfleet.config import Config, save_config
from qfleet.envs import EnvSpec
from qfleet.runs.checkpoints import (
    CheckpointError,
    discard_replay,
    load_checkpoint,
    load_replay,
    prune_replays,
    save_checkpoint,
    save_replay,
    write_text_atomic,
)
from qfleet.runs.storage import RunStorage, Uploader
from qfleet.stats import Counters

SYNC_EVERY_S = 60.0
FINAL_UPLOAD_S = 600.0
"""How long the end of a run waits for its last upload (a replay save of several GiB)."""


class Console(Protocol):
    """Where the record says what it did (the driver's `Reporter`)."""

    def print(self, text: str) -> None: ...
    def flush(self) -> None: ...


class StopReason(StrEnum):
    """Why a run ended, as `summary.json`'s `stopped_by` says it; each has its exit code."""

    TARGET_RETURN = "target_return"
    ENV_STEPS = "env_steps"
    TIME = "time_s"
    INTERRUPTED = "interrupted"
    TERMINATED = "terminated"
    NONFINITE_LOSS = "nonfinite_loss"
    LEARNER_LOST = "learner_lost"
    ACTOR_FAILURES = "actor_failures"
    NO_NODES = "no_nodes"
    """The fleet needed nodes that neither the cluster nor its autoscaler brought."""
    RAY_FAILURE = "ray_failure"
    SWEEP = "sweep"
    """A sweep trial ended by its sweep: stopped early by the scheduler, restarted by PBT
    from another trial's checkpoint, or the sweep interrupted."""
    MEASURED = "measured"
    """A benchmark's measuring window ended (`qfleet bench fleet`)."""
    ERROR = "error"
    """An error of the driver itself; its traceback goes to `error.log` in the run dir."""

    @property
    def exit_code(self) -> int:
        """0 done, 1 failed, 130 SIGINT (Ctrl-C), 143 SIGTERM (`ray job stop`, Kubernetes)."""
        return _EXIT_CODES.get(self, 1)

    @property
    def budget(self) -> bool:
        """A planned end of training, after which the final weights are evaluated."""
        return self in (StopReason.ENV_STEPS, StopReason.TIME)


_EXIT_CODES = {StopReason.TARGET_RETURN: 0, StopReason.ENV_STEPS: 0, StopReason.TIME: 0,
               StopReason.SWEEP: 0, StopReason.MEASURED: 0, StopReason.INTERRUPTED: 130,
               StopReason.TERMINATED: 143}


def learner_state(saved: dict[str, Any], counters: dict[str, int],
                  replay: dict[str, Any] | None) -> dict[str, Any]:
    """What a learner starts from out of a loaded checkpoint (`Learner.load_state_dict`)."""
    return {"network": saved["network"], "target": saved["target"],
            "optimizer": saved["optimizer"], "counters": counters, "replay": replay}


class RunRecord:
    def __init__(self, config: Config, spec: EnvSpec, storage: RunStorage,
                 reporter: Console, resume: dict[str, Any] | None = None) -> None:
        """`resume`: the loaded checkpoint the run continues (what a learner lost before
        this run's first checkpoint restarts from)."""
        self.config, self.spec, self.storage, self.reporter = config, spec, storage, reporter
        self.run_dir = storage.local
        self.resume = resume
        self.stopped_by: StopReason | None = None
        self.stop_message = ""
        self.written: Path | None = None  # this run's newest checkpoint
        self.written_counters: Counters | None = None  # and its counters
        self._last_sync = time.monotonic()
        self._uploader: Uploader | None = None

    # -- why it ends -----------------------------------------------------------------------
    def stop(self, reason: StopReason, message: str) -> None:
        """End the run for `reason`, unless an earlier reason already ends it."""
        if self.stopped_by is None:
            self.stopped_by, self.stop_message = reason, message

    @property
    def stopped(self) -> bool:
        return self.stopped_by is not None

    # -- what it leaves ----------------------------------------------------------------------
    def write_config(self, config: Config) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, self.run_dir / "config.yaml")

    def checkpoint(self, state: dict[str, Any]) -> Path:
        """Write a checkpoint (and the replay in `state`, if any, beside it)."""
        replay = state.pop("replay", None)
        full = {**state, "config": self.config.to_dict(),
                "spec": {"obs_shape": list(self.spec.obs_shape),
                         "obs_dtype": str(self.spec.obs_dtype),
                         "num_actions": self.spec.num_actions}}
        updates = int(state["counters"]["updates"])
        # The replay first: a crash before the checkpoint is on disk keeps the last pair.
        saved_replay = replay is not None and self._save_replay_first(updates, replay)
        if not saved_replay:
            discard_replay(self.run_dir, updates)
        try:
            path = save_checkpoint(self.run_dir, full, self.config.log.keep_checkpoints)
        except OSError:  # no checkpoint for it: its replay only takes room
            discard_replay(self.run_dir, updates)
            raise
        self.written, self.written_counters = path, Counters.from_dict(state["counters"])
        prune_replays(self.run_dir, updates if saved_replay else None)
        self.sync(force=True)
        return path

    def _save_replay_first(self, updates: int, replay: dict[str, Any]) -> bool:
        """The replay of the checkpoint about to be written; a failed write (a full disk)
        costs the replay, not the checkpoint."""
        try:
            save_replay(self.run_dir, updates, replay)
            return True
        except OSError as err:
            self.reporter.print(f"warning: replay not saved with the checkpoint: {err}")
            return False

    def newest_checkpoint(self) -> Path | None:
        """This run's newest checkpoint, else the one it resumed from (never another run's
        that happens to share the run directory)."""
        if self.written is not None:
            return self.written
        source = (self.resume or {}).get("source")
        return None if source is None else Path(source)

    def restart_state(self, fleet: Counters) -> tuple[dict[str, Any], Counters, str]:
        """What a restarted learner starts from: the newest checkpoint's weights, optimizer
        and learning counters (with its replay when one was saved with it), or fresh weights
        before the first checkpoint. The fleet's own counters (env steps, episodes, weight
        versions) never go back: that experience happened. Returns the state, its counters
        and a description for the console."""
        saved, replay, source = self._restart_source()
        if saved is None:
            counters = Counters(env_steps=fleet.env_steps, episodes=fleet.episodes,
                                version=fleet.version)
            return {"counters": counters.to_dict()}, counters, source
        ckpt = Counters.from_dict(saved["counters"])
        counters = Counters(updates=ckpt.updates, transitions=ckpt.transitions,
                            env_steps=max(ckpt.env_steps, fleet.env_steps),
                            episodes=max(ckpt.episodes, fleet.episodes),
                            version=max(ckpt.version, fleet.version))
        source += " and its replay" if replay else ""
        return learner_state(saved, counters.to_dict(), replay), counters, source

    def _restart_source(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
        """The newest state this run may restart a learner from: its own newest checkpoint
        (with the replay saved with it), else the checkpoint it resumed from, else none."""
        if self.written is not None:
            try:
                saved = load_checkpoint(self.written)
                replay = load_replay(self.written.parent, int(saved["counters"]["updates"]))
                return saved, replay, f"checkpoint {self.written.name}"
            except CheckpointError as err:  # damaged since: an older state beats none
                self.reporter.print(f"warning: {err}")
        if self.resume is not None:
            name = Path(self.resume.get("source", "?")).name
            return (self.resume, self.resume.get("replay"),
                    f"the checkpoint it resumed from ({name})")
        return None, None, "fresh weights (no checkpoint yet)"

    def replay_fits(self, nbytes: int) -> bool:
        """Whether the disk has room for a replay of `nbytes` (twice, to be safe)."""
        free = shutil.disk_usage(self.run_dir).free
        if nbytes * 2 > free:
            self.reporter.print(f"replay not saved: {nbytes / 2**30:.1f} GiB needed, "
                                f"{free / 2**30:.1f} GiB free on disk")
            return False
        return True

    def save_replay(self, updates: int, replay: dict[str, Any]) -> None:
        path = save_replay(self.run_dir, updates, replay)
        prune_replays(self.run_dir, updates)
        self.reporter.print(f"replay saved: {path} ({replay['size']:,} transitions)")

    def sync(self, force: bool = False, wait: bool = False) -> None:
        """Mirror the run directory to its storage URI (if any), in the background: when
        forced, else at most once a minute; `wait`: until it is done (the end of a run),
        for at most `FINAL_UPLOAD_S`."""
        now = time.monotonic()
        if not force and now - self._last_sync < SYNC_EVERY_S:
            return
        self._last_sync = now
        if self.storage.uri is None:
            return
        self.reporter.flush()
        if self._uploader is None:
            self._uploader = Uploader(self.storage, self._upload_failed)
        if not wait:
            self._uploader.request()
            return
        uploader, self._uploader = self._uploader, None
        if not uploader.close(FINAL_UPLOAD_S):
            self.reporter.print(f"warning: the last upload to {self.storage.uri} did not "
                                f"finish within {FINAL_UPLOAD_S:g} s; the run directory "
                                f"{self.run_dir} holds everything")

    def _upload_failed(self, err: Exception) -> None:
        self.reporter.print(f"warning: upload to {self.storage.uri} failed: {err}")

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """`summary.json` (atomically), with why the run ended; returns what it wrote."""
        assert self.stopped_by is not None, "a summary needs a reason to stop"
        summary = {**summary, "stopped_by": self.stopped_by.value,
                   "stop_message": self.stop_message, "exit_code": self.stopped_by.exit_code,
                   "run_uri": self.storage.uri}
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
