"""The run directory's mirror to a storage URI: streamed in chunks, on its own thread."""

from __future__ import annotations

import os
from pathlib import Path

from qfleet.storage import CHUNK_BYTES, RunStorage, Uploader


def mirror(tmp_path: Path) -> tuple[RunStorage, Path]:
    remote = tmp_path / "bucket" / "run"
    storage = RunStorage(f"file://{remote}")
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
    uploader.request()  # returns at once: the driver's loop goes on
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


def test_an_unchanged_file_is_not_sent_again(tmp_path):
    storage, _ = mirror(tmp_path)
    (storage.local / "events").write_bytes(b"x")
    assert storage.sync() == 1
    assert storage.sync() == 0
    (storage.local / "events").write_bytes(b"xy")  # TensorBoard appended
    assert storage.sync() == 1
