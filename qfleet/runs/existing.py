"""A run directory that already holds a run: never written over.

Ray job retries, KubeRay's RayJob `backoffLimit` and people rerun the same command into
the same `--run-dir`. `qfleet train` then refuses (one line, exit 2) unless told
`--if-exists resume`, which continues the run from its newest checkpoint; a run that
already ended on its target or its budget is left as it is, and the command succeeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from qfleet.errors import RunExistsError
from qfleet.runs.checkpoints import CKPT_DIR
from qfleet.runs.record import StopReason
from qfleet.runs.storage import RunStorage


class IfExists(StrEnum):
    FAIL = "fail"
    """Refuse: another run (or a typo) must not write into this one."""
    RESUME = "resume"
    """Continue it from its newest checkpoint (a retried job), or succeed at once if it
    ended on its target or budget."""


ENDED = (StopReason.TARGET_RETURN, StopReason.ENV_STEPS, StopReason.TIME)
"""Ends a retry has nothing to add to; any other end (a failure, Ctrl-C, SIGTERM) resumes."""


@dataclass(frozen=True)
class Existing:
    checkpoints: list[str]
    summary: dict[str, Any] | None

    @property
    def ended(self) -> bool:
        return self.summary is not None and self.summary.get("stopped_by") in ENDED

    def describe(self) -> str:
        if self.summary is not None:
            return (f"stopped by {self.summary.get('stopped_by')} at "
                    f"{self.summary.get('env_steps', 0):,} env steps")
        if self.checkpoints:
            return f"no summary yet; newest checkpoint {self.checkpoints[-1]}"
        return "started, no checkpoint yet"


def find_existing(storage: RunStorage) -> Existing | None:
    """The run in `storage`, if there is one (its `config.yaml` says so). A sweep's
    directory is refused whatever `--if-exists` says: no run may write into it."""
    if storage.read_text("sweep.json") is not None:
        raise RunExistsError(f"--run-dir {storage.target!r} holds a sweep; a training run "
                             "never writes into it (choose another --run-dir)")
    if storage.read_text("config.yaml") is None:
        return None
    summary_text = storage.read_text("summary.json")
    try:
        summary = json.loads(summary_text) if summary_text else None
    except json.JSONDecodeError:
        summary = None  # cut short mid-write: the checkpoints tell where the run is
    checkpoints = [n for n in storage.names(CKPT_DIR) if n.startswith("ckpt-")]
    return Existing(checkpoints, summary)


def refuse(storage: RunStorage, existing: Existing) -> RunExistsError:
    return RunExistsError(
        f"--run-dir {storage.target!r} holds a run already ({existing.describe()}); "
        "--if-exists resume continues it from its newest checkpoint, or give another "
        "--run-dir")


def check_video_dir(target: Path, evaluated: str | Path) -> None:
    """`evaluate --video DIR` writes `episode-NNN.mp4` files: never inside another run's
    or a sweep's directory (inside the evaluated run's own is fine), never over another
    evaluation's videos."""
    here = target.resolve()
    source = Path(evaluated).resolve()
    if source.is_file():  # a checkpoint: its run is the folder above `checkpoints/`
        source = source.parent.parent if source.parent.name == CKPT_DIR else source.parent
    for folder in (here, *here.parents):
        if folder == source:
            break
        if (folder / "sweep.json").is_file() or ((folder / "config.yaml").is_file() and (
                (folder / CKPT_DIR).is_dir() or (folder / "summary.json").is_file())):
            raise RunExistsError(f"--video {str(target)!r} is inside another run's "
                                 f"directory {str(folder)!r}; write the videos elsewhere")
    if here.is_dir() and any(here.glob("episode-*.mp4")):
        raise RunExistsError(f"--video {str(target)!r} holds another evaluation's videos "
                             "already; give an empty or new directory")
