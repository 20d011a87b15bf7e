"""Checkpoint files: written atomically, loaded without arbitrary pickle.

A checkpoint is a dict of tensors and plain data saved with `torch.save` and loaded with
`weights_only=True`, so a checkpoint from an untrusted place cannot run code. It is written
to a temporary file, fsynced and renamed, so a crash mid-write never replaces a good one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "qfleet-checkpoint/1"
CKPT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A missing, unreadable or foreign checkpoint (one line, exit code 2)."""


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write `ckpt-<updates>.pt` atomically and keep only the newest `keep`."""
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    updates = int(state["counters"]["updates"])
    path = folder / f"ckpt-{updates:010d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in sorted(folder.glob("ckpt-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest one in a run directory."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted((p / CKPT_DIR).glob("ckpt-*.pt")) or sorted(p.glob("ckpt-*.pt"))
        if found:
            return found[-1]
        raise CheckpointError(f"{str(p)!r} is not a qfleet run directory (no checkpoints in it)")
    raise CheckpointError(f"checkpoint {str(p)!r} does not exist")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    file = find_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {str(file)!r} is unreadable or corrupted: "
                              f"{reason[:160]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(file)!r} is not a qfleet checkpoint")
    for key in ("network", "config", "counters"):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(file)!r} lacks {key!r}")
    return state


REPLAY_FILE = "replay.pt"


def save_replay(run_dir: Path, updates: int, replay: dict[str, Any]) -> Path:
    """The replay beside the checkpoints, tagged with the update count it belongs to."""
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPLAY_FILE
    tmp = path.with_suffix(".pt.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "updates": updates, "replay": replay}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_replay(run_dir: Path, updates: int) -> dict[str, Any] | None:
    """The saved replay if it belongs to the checkpoint at `updates` (else None)."""
    path = Path(run_dir) / CKPT_DIR / REPLAY_FILE
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # a damaged replay costs a refill, never the run
    if not isinstance(saved, dict) or saved.get("updates") != updates:
        return None
    return saved["replay"]


def load_run_state(run_dir: str | Path) -> dict[str, Any]:
    """The newest checkpoint of a run directory as a run continues it: loaded, with its
    `source` path and the `replay` saved with it (None when none belongs to it)."""
    path = find_checkpoint(run_dir)
    state = load_checkpoint(path)
    state["source"] = str(path)
    state["replay"] = load_replay(Path(run_dir), int(state["counters"]["updates"]))
    return state
