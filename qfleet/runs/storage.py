"""Where a run lives: a local directory, or a storage URI mirrored from a local staging dir.

The driver always writes to a local directory (TensorBoard, checkpoints and summary need a
real filesystem and atomic renames). With `--run-dir s3://bucket/runs/x` (or `gs://`,
`file://`, anything pyarrow.fs opens) that directory is a staging copy under
`~/.cache/qfleet/staging/`, and every file that changed is uploaded after each checkpoint,
every minute, and at the end — so a run survives the loss of the machine that drove it.
Uploads stream in chunks on a thread of their own (`Uploader`): a replay save of several
GiB neither fills the driver's memory nor stalls its loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from qfleet.config import ConfigError

CHUNK_BYTES = 8 << 20
"""Uploads and downloads move files in pieces of this size, never whole."""


def is_uri(target: str | os.PathLike[str]) -> bool:
    return "://" in str(target)


def _filesystem(uri: str):
    try:
        import pyarrow.fs as pafs
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise ConfigError("--run-dir: storage URIs need pyarrow (pip install pyarrow)") from None
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--run-dir: cannot open storage URI {uri!r}: {first}") from None


class RunStorage:
    """A run directory: `local` is where the driver writes; `sync()` mirrors it to a URI."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = str(target)
        self.uri: str | None = None
        if is_uri(self.target):
            self.uri = self.target.rstrip("/")
            self._fs, self._root = _filesystem(self.uri)
            digest = hashlib.sha1(self.uri.encode()).hexdigest()[:12]
            name = self.uri.rsplit("/", 1)[-1] or "run"
            self.local = Path.home() / ".cache" / "qfleet" / "staging" / f"{name}-{digest}"
        else:
            self.local = Path(self.target)
        self._sent: dict[str, tuple[int, int]] = {}

    def __str__(self) -> str:
        return self.target

    def fetch(self, fresh: bool = False) -> None:
        """Download the run from its URI (for --resume and evaluate). `fresh`: empty the
        staging copy first (a run about to continue from the URI)."""
        if self.uri is None:
            return
        import pyarrow.fs as pafs

        info = self._fs.get_file_info(self._root)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"{self.uri!r} does not exist")
        # The URI is the run: a staging copy left by a driver that died on this machine may
        # hold files it never uploaded, which would be taken as sent and never mirrored.
        if fresh:
            shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True, exist_ok=True)
        for item in self._fs.get_file_info(pafs.FileSelector(self._root, recursive=True)):
            if item.type != pafs.FileType.File:
                continue
            dest = self.local / os.path.relpath(item.path, self._root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self._fs.open_input_stream(item.path) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK_BYTES)
        self._remember()

    def read_text(self, name: str) -> str | None:
        """One file of the run (`summary.json`, say), from the URI when there is one;
        None when it is not there. Cheap: a retried job asks before it fetches a whole run."""
        if self.uri is None:
            path = self.local / name
            return path.read_text() if path.is_file() else None
        try:
            with self._fs.open_input_stream(f"{self._root}/{name}") as src:
                return src.read().decode()
        except (FileNotFoundError, OSError):
            return None

    def names(self, folder: str) -> list[str]:
        """The file names in `folder` of the run (on the URI when there is one)."""
        if self.uri is None:
            local = self.local / folder
            return sorted(p.name for p in local.iterdir() if p.is_file()) \
                if local.is_dir() else []
        import pyarrow.fs as pafs

        try:
            found = self._fs.get_file_info(pafs.FileSelector(f"{self._root}/{folder}",
                                                             allow_not_found=True))
        except OSError:
            return []
        return sorted(i.base_name for i in found if i.type == pafs.FileType.File)

    def _remember(self) -> None:
        for path in self.local.rglob("*"):
            if path.is_file():
                st = path.stat()
                self._sent[str(path)] = (st.st_size, st.st_mtime_ns)

    def sync(self) -> int:
        """Upload every file that changed since the last sync; return how many."""
        if self.uri is None:
            return 0
        sent = 0
        present = set()
        # Checkpoints last: a sync cut short never leaves the mirror's newest checkpoint
        # without the replay (or anything else) written before it.
        for path in sorted(self.local.rglob("*"),
                           key=lambda p: (p.name.startswith("ckpt-"), str(p))):
            if not path.is_file() or path.name.endswith(".tmp"):
                continue
            present.add(str(path))
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if self._sent.get(str(path)) == stamp:
                continue
            rel = path.relative_to(self.local).as_posix()
            dest = f"{self._root}/{rel}"
            self._fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            try:
                with open(path, "rb") as src, self._fs.open_output_stream(dest) as out:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
            except FileNotFoundError:  # pruned while we looked: the next sync drops it
                continue
            self._sent[str(path)] = stamp
            sent += 1
        for gone in set(self._sent) - present:  # pruned checkpoints leave the mirror too
            rel = Path(gone).relative_to(self.local).as_posix()
            with contextlib.suppress(OSError):
                self._fs.delete_file(f"{self._root}/{rel}")
            del self._sent[gone]
        return sent

    def prune(self, folder: str, drop: Callable[[str], bool]) -> None:
        """Delete the files of `folder` (relative) whose names `drop` picks, here and on
        the URI (whatever process uploaded them)."""
        local = self.local / folder
        for path in list(local.glob("*")) if local.is_dir() else []:
            if path.is_file() and drop(path.name):
                path.unlink(missing_ok=True)
                self._sent.pop(str(path), None)
        if self.uri is None:
            return
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(f"{self._root}/{folder}", allow_not_found=True)
        for item in self._fs.get_file_info(selector):
            if item.type == pafs.FileType.File and drop(item.base_name):
                with contextlib.suppress(OSError):
                    self._fs.delete_file(item.path)


class Uploader:
    """Runs `RunStorage.sync()` on a thread of its own: the driver asks for a sync and goes
    on. One sync runs at a time; a request made during one is served by the next, and
    `flush()` waits for a sync that started after it was called."""

    def __init__(self, storage: RunStorage, on_error: Callable[[Exception], None]) -> None:
        self.storage, self.on_error = storage, on_error
        self._cond = threading.Condition()
        self._requested = 0  # requests made
        self._done = 0  # requests served by a finished sync
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="qfleet-upload", daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            self._requested += 1
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Sync now and wait for it (the end of a run); False if it did not finish in time
        or the uploader is gone."""
        with self._cond:
            self._requested += 1
            wanted = self._requested
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: self._done >= wanted or not self._thread.is_alive(), timeout
            ) and self._done >= wanted

    def close(self, timeout: float | None = None) -> bool:
        """The last sync, waited for; then the thread ends."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(0 if not done else timeout)
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._requested > self._done)
                if self._requested == self._done:  # closed, nothing left to send
                    return
                serving = self._requested
            try:
                self.storage.sync()
            except Exception as err:  # any failure (OSError, ArrowInvalid): retry next time
                self.on_error(err)
            with self._cond:
                self._done = serving
                self._cond.notify_all()
