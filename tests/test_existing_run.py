"""A `--run-dir` that already holds a run is never written over: refused by default,
continued with `--if-exists resume`, and left as it is when it had already ended (without
Ray: what happens before anything starts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qfleet.config import load_config, save_config
from qfleet.runs.existing import find_existing
from qfleet.runs.storage import RunStorage
from tests.conftest import CONFIGS, assert_one_line_error, qfleet


def fake_run(run_dir: Path, stopped_by: str | None, checkpoints: int = 1) -> dict[Path, bytes]:
    """A run directory as `qfleet train` leaves it (its config, checkpoints, summary)."""
    run_dir.mkdir(parents=True)
    save_config(load_config(CONFIGS / "cartpole.yaml"), run_dir / "config.yaml")
    (run_dir / "checkpoints").mkdir()
    for i in range(checkpoints):
        (run_dir / "checkpoints" / f"ckpt-{100 * (i + 1):010d}.pt").write_bytes(b"weights")
    if stopped_by is not None:
        (run_dir / "summary.json").write_text(json.dumps(
            {"stopped_by": stopped_by, "env_steps": 12345, "exit_code": 0,
             "stop_message": f"{stopped_by} reached"}))
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_the_same_command_into_a_run_is_refused_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    before = fake_run(run_dir, "learner_lost", checkpoints=2)
    result = qfleet("train", CONFIGS / "cartpole.yaml", "--run-dir", run_dir, timeout=120)
    assert_one_line_error(result, f"--run-dir '{run_dir}' holds a run already",
                          "stopped by learner_lost at 12,345 env steps", "--if-exists resume")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("stopped_by", ["target_return", "env_steps", "time_s"])
def test_a_retry_of_a_run_that_ended_succeeds_at_once(tmp_path, stopped_by):
    run_dir = tmp_path / "run"
    before = fake_run(run_dir, stopped_by)
    result = qfleet("train", CONFIGS / "cartpole.yaml", "--run-dir", run_dir,
                    "--if-exists", "resume", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"already ended ({stopped_by} reached); nothing to do" in result.stdout
    assert json.loads(result.stdout.splitlines()[0])["already_ended"] is True
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_an_unknown_if_exists_is_one_line(tmp_path):
    fake_run(tmp_path / "run", None)
    assert_one_line_error(qfleet("train", CONFIGS / "cartpole.yaml", "--run-dir",
                                 tmp_path / "run", "--if-exists", "overwrite", timeout=120),
                          "--if-exists: expected fail or resume, got 'overwrite'")


def test_a_run_on_a_storage_uri_is_found_without_fetching_it(tmp_path):
    run_dir = tmp_path / "bucket" / "run"
    fake_run(run_dir, None, checkpoints=3)
    storage = RunStorage(f"file://{run_dir}")
    existing = find_existing(storage)
    assert existing is not None and not existing.ended
    assert existing.checkpoints[-1] == "ckpt-0000000300.pt"
    assert existing.describe() == "no summary yet; newest checkpoint ckpt-0000000300.pt"
    assert not storage.local.exists()  # nothing was downloaded to find it
    assert find_existing(RunStorage(f"file://{tmp_path / 'bucket' / 'other'}")) is None


def test_a_sweep_directory_and_a_run_directory_never_take_each_other(tmp_path):
    from qfleet.errors import RunExistsError
    from qfleet.sweep.tuner import check_sweep_dir

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text("{}")
    for mode in ("fail", "resume"):
        assert_one_line_error(qfleet("train", CONFIGS / "cartpole.yaml", "--run-dir", sweep_dir,
                                     "--if-exists", mode, timeout=120),
                              "holds a sweep; a training run never writes into it")
    run_dir = tmp_path / "run"
    fake_run(run_dir, "env_steps")
    with pytest.raises(RunExistsError, match="holds a training run"):
        check_sweep_dir(RunStorage(run_dir), None, resume=False)
    # A sweep on a storage URI is seen there, not in a staging copy never fetched.
    uri = RunStorage(f"file://{sweep_dir}")
    with pytest.raises(RunExistsError, match="holds a sweep already"):
        check_sweep_dir(uri, None, resume=False)
    check_sweep_dir(RunStorage(tmp_path / "new"), None, resume=False)  # a new one is fine


def test_evaluate_writes_its_videos_neither_into_another_run_nor_over_other_videos(
        tmp_path):
    run_dir, other = tmp_path / "run", tmp_path / "other"
    fake_run(run_dir, "env_steps")
    before = fake_run(other, "env_steps")
    result = qfleet("evaluate", run_dir, "--video", other / "videos", timeout=120)
    assert_one_line_error(result, f"--video '{other / 'videos'}' is inside another run's "
                          f"directory '{other}'")
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    earlier = run_dir / "eval-videos"  # the evaluated run's own folder is fine, but...
    earlier.mkdir()
    (earlier / "episode-001.mp4").write_bytes(b"an earlier evaluation")
    result = qfleet("evaluate", run_dir, "--video", earlier, timeout=120)
    assert_one_line_error(result, "holds another evaluation's videos already")
    assert (earlier / "episode-001.mp4").read_bytes() == b"an earlier evaluation"
