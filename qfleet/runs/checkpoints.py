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

from qfleet.errors import CheckpointError

FORMAT = "qfleet-checkpoint/1"
CKPT_DIR = "checkpoints"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `<name>.tmp`, then rename it over `path`: a reader (or a crash) sees the old
    file or the new one, never half of one (summary.json, a published result)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Save to `<path>.tmp`, fsync, rename over `path` and fsync the folder: a crash
    leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(".pt.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, say: no half-written file is left behind
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write `ckpt-<updates>.pt` atomically and keep only the newest `keep`."""
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    updates = int(state["counters"]["updates"])
    path = folder / f"ckpt-{updates:010d}.pt"
    _write_atomic(path, {"format": FORMAT, **state})
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


def is_replay_file(name: str) -> bool:
    """Whether a file of a checkpoints folder is a replay save."""
    return name.startswith("replay-") and name.endswith(".pt")


def replay_name(updates: int) -> str:
    """The file of the replay saved with the checkpoint at `updates`, beside it: named for
    it, so that a new save never replaces the one the newest checkpoint belongs to."""
    return f"replay-{updates:010d}.pt"


def save_replay(run_dir: Path, updates: int, replay: dict[str, Any]) -> Path:
    """Write the replay of the checkpoint at `updates`, atomically. Write it before that
    checkpoint and `prune_replays` after it: a crash in between then leaves the previous
    checkpoint with its replay."""
    path = Path(run_dir) / CKPT_DIR / replay_name(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, {"format": FORMAT, "updates": updates, "replay": replay})
    return path


def prune_replays(run_dir: Path, keep_updates: int | None) -> None:
    """Delete every replay save but the one of the checkpoint at `keep_updates` (all of
    them when None): only the newest checkpoint's replay is ever loaded. Also the
    temporary file of a write that a crash cut short."""
    folder = Path(run_dir) / CKPT_DIR
    keep = None if keep_updates is None else replay_name(keep_updates)
    for path in folder.glob("replay*.pt*"):
        name = path.name.removesuffix(".tmp")
        if is_replay_file(name) and path.name != keep:
            path.unlink(missing_ok=True)


def discard_replay(run_dir: Path, updates: int) -> None:
    """Delete the replay file named for `updates`: one left by a failed checkpoint or an
    earlier timeline must never pair with a new checkpoint of the same update count."""
    (Path(run_dir) / CKPT_DIR / replay_name(updates)).unlink(missing_ok=True)


def load_replay(folder: Path, updates: int) -> dict[str, Any] | None:
    """The replay saved with the checkpoint at `updates` in `folder` (None when none is)."""
    path = Path(folder) / replay_name(updates)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # a damaged replay costs a refill, never the run
    if isinstance(saved, dict) and saved.get("updates") == updates:
        return saved["replay"]
    return None


def load_run_state(run_dir: str | Path) -> dict[str, Any]:
    """The newest checkpoint of a run directory as a run continues it: loaded, with its
    `source` path and the `replay` saved with it (None when none belongs to it)."""
    path = find_checkpoint(run_dir)
    state = load_checkpoint(path)
    state["source"] = str(path)
    state["replay"] = load_replay(path.parent, int(state["counters"]["updates"]))
    return state
