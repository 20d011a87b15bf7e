"""The run directory's mirror to a storage URI: streamed in chunks, on its own thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from qfleet.runs.storage import CHUNK_BYTES, RunStorage, Uploader


def mirror(tmp_path: Path, kind: type[RunStorage] = RunStorage) -> tuple[RunStorage, Path]:
    """A run staged in tmp_path/staging, mirrored to tmp_path/bucket/run."""
    remote = tmp_path / "bucket" / "run"
    storage = kind(f"file://{remote}")
    storage.local = tmp_path / "staging"
    storage.local.mkdir()
    return storage, remote


def test_uploads_run_in_the_background_and_flush_waits_for_them(tmp_path):
    storage, remote = mirror(tmp_path)
    big = os.urandom(3 * CHUNK_BYTES + 12345)  # several chunks and a partial one
    (storage.local / "replay").mkdir()
    (storage.local / "replay" / "replay-1.pt").write_bytes(big)
    (storage.local / "summary.json").write_text("{}")
    errors: list[OSError] = []
    uploader = Uploader(storage, errors.append)
    start = time.monotonic()
    uploader.request()
    assert time.monotonic() - start < 0.1  # the driver's loop goes on at once
    assert uploader.close(timeout=60)
    assert (remote / "replay" / "replay-1.pt").read_bytes() == big
    assert (remote / "summary.json").read_text() == "{}"
    assert not errors


def test_a_file_pruned_meanwhile_leaves_the_mirror_too(tmp_path):
    storage, remote = mirror(tmp_path)
    old = storage.local / "ckpt-1.pt"
    old.write_bytes(b"a")
    assert storage.sync() == 1 and (remote / "ckpt-1.pt").exists()
    old.unlink()
    (storage.local / "ckpt-2.pt").write_bytes(b"b")
    assert storage.sync() == 1
    assert not (remote / "ckpt-1.pt").exists() and (remote / "ckpt-2.pt").read_bytes() == b"b"


def test_prune_deletes_here_and_on_the_uri_what_another_process_uploaded(tmp_path):
    """A sweep trial restored on a fresh actor drops checkpoints an earlier one uploaded."""
    first, remote = mirror(tmp_path)
    (first.local / "checkpoints").mkdir()
    for name in ("ckpt-0000000010.pt", "ckpt-0000000020.pt"):
        (first.local / "checkpoints" / name).write_bytes(b"x")
    assert first.sync() == 2
    later = RunStorage(f"file://{remote}")  # a new process: nothing sent by it
    later.local = first.local
    later.prune("checkpoints", lambda name: name == "ckpt-0000000020.pt")
    assert sorted(p.name for p in (remote / "checkpoints").iterdir()) == ["ckpt-0000000010.pt"]
    assert sorted(p.name for p in (later.local / "checkpoints").iterdir()) == [
        "ckpt-0000000010.pt"]
    later.prune("nothing-here", lambda name: True)  # a folder on neither side


def test_an_unchanged_file_is_not_sent_again(tmp_path):
    storage, _ = mirror(tmp_path)
    (storage.local / "events").write_bytes(b"x")
    assert storage.sync() == 1
    assert storage.sync() == 0
    (storage.local / "events").write_bytes(b"xy")  # TensorBoard appended
    assert storage.sync() == 1


class GatedStorage(RunStorage):
    """A real mirror whose syncs wait at a gate the test opens: requests can be made while
    one runs."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.seen: list[set[str]] = []

    def sync(self) -> int:
        self.started.release()
        assert self.gate.wait(30)
        self.seen.append({p.name for p in self.local.iterdir()})
        return super().sync()


def gated(tmp_path: Path) -> tuple[GatedStorage, Path]:
    storage, remote = mirror(tmp_path, GatedStorage)
    assert isinstance(storage, GatedStorage)
    return storage, remote


def test_a_file_written_during_a_sync_is_sent_by_the_flush_after_it(tmp_path):
    storage, remote = gated(tmp_path)
    (storage.local / "ckpt-1.pt").write_bytes(b"1")
    uploader = Uploader(storage, lambda err: None)
    uploader.request()
    assert storage.started.acquire(timeout=30)  # the first sync is running, held at the gate
    (storage.local / "summary.json").write_text("{}")  # the end of the run, meanwhile
    done: list[bool] = []
    flusher = threading.Thread(target=lambda: done.append(uploader.close(timeout=60)))
    flusher.start()
    time.sleep(0.2)
    assert not done  # close() waits: the sync it asked for has not run yet
    storage.gate.set()
    flusher.join(60)
    assert done == [True]
    assert len(storage.seen) == 2 and "summary.json" in storage.seen[-1]
    assert (remote / "summary.json").read_text() == "{}"


def test_any_upload_error_is_reported_and_the_next_sync_still_runs(tmp_path):
    storage, remote = gated(tmp_path)
    storage.gate.set()
    errors: list[Exception] = []
    original = storage.sync
    calls = iter([ValueError("ArrowInvalid: bad bucket"), None])

    def flaky() -> int:
        failure = next(calls)
        if failure is not None:
            raise failure
        return original()

    storage.sync = flaky  # type: ignore[method-assign]
    (storage.local / "a").write_bytes(b"a")
    uploader = Uploader(storage, errors.append)
    assert uploader.flush(timeout=30)  # the failed sync counts as done: no hang
    assert uploader.close(timeout=30)
    assert [str(e) for e in errors] == ["ArrowInvalid: bad bucket"]
    assert (remote / "a").read_bytes() == b"a"


def test_a_hung_upload_does_not_hang_the_end_of_the_run(tmp_path):
    storage, _ = gated(tmp_path)  # the gate never opens: the bucket hangs
    uploader = Uploader(storage, lambda err: None)
    start = time.monotonic()
    assert uploader.close(timeout=1.0) is False
    assert time.monotonic() - start < 10
    storage.gate.set()  # let the thread go
