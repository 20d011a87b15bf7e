"""The run record: why a run ends (first reason wins, each with its exit code), and what a
restarted learner starts from."""

import pytest
import torch

from qfleet.actors.actor import Actor
from qfleet.config import load_config
from qfleet.driver.reporter import Reporter
from qfleet.envs import env_spec
from qfleet.learner.learner import Learner
from qfleet.runs.checkpoints import load_run_state
from qfleet.runs.record import RunRecord, StopReason
from qfleet.runs.storage import RunStorage
from qfleet.stats import Counters


def make_record(tmp_path, *overrides):
    config = load_config(None, ["stop.env_steps=1000", "replay.min_size=32", *overrides])
    spec = env_spec(config.env)
    storage = RunStorage(tmp_path / "run")
    storage.local.mkdir(parents=True)
    return config, spec, RunRecord(config, spec, storage, Reporter(config, storage.local))


def test_the_first_reason_to_stop_wins_and_sets_the_exit_code(tmp_path):
    _, _, record = make_record(tmp_path)
    assert not record.stopped
    record.stop(StopReason.TERMINATED, "terminated (SIGTERM)")
    record.stop(StopReason.TIME, "time budget spent")
    assert record.stopped_by is StopReason.TERMINATED
    summary = record.write_summary({"env_steps": 5})
    assert summary["stopped_by"] == "terminated" and summary["exit_code"] == 143
    assert {r.value: r.exit_code for r in StopReason} == {
        "target_return": 0, "env_steps": 0, "time_s": 0, "interrupted": 130,
        "terminated": 143, "nonfinite_loss": 1, "learner_lost": 1, "actor_failures": 1,
        "no_nodes": 1, "ray_failure": 1, "sweep": 0, "measured": 0, "error": 1}


def test_a_learner_lost_before_any_checkpoint_restarts_fresh_with_the_fleets_counters(
        tmp_path):
    config, spec, record = make_record(tmp_path)
    fleet = Counters(updates=700, env_steps=9000, transitions=8000, episodes=40, version=70)
    state, counters, source = record.restart_state(fleet)
    assert "fresh weights" in source
    assert counters == Counters(updates=0, env_steps=9000, transitions=0, episodes=40,
                                version=70)
    learner = Learner(config, spec)
    learner.load_state_dict(state)
    assert learner.counters == counters


def test_a_learner_restarts_from_the_newest_checkpoint_and_its_replay(tmp_path):
    config, spec, record = make_record(tmp_path, "replay.save_with_checkpoints=true")
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    learner.add(actor.collect(10))
    for _ in range(5):
        learner.step(learner.sample())
    state = learner.state_dict()
    state["replay"] = learner.replay_state()
    record.checkpoint(state)
    # The fleet went on after the checkpoint (more env steps and versions) until the loss.
    fleet = Counters(updates=9, env_steps=learner.env_steps + 500, transitions=1,
                     episodes=learner.episodes + 3, version=learner.version + 4)
    start, counters, source = record.restart_state(fleet)
    assert "ckpt-0000000005.pt and its replay" in source
    assert counters.updates == 5 and counters.transitions == learner.transitions
    assert counters.env_steps == fleet.env_steps and counters.episodes == fleet.episodes
    assert counters.version == fleet.version
    restarted = Learner(config, spec)
    restarted.load_state_dict(start)
    assert len(restarted.replay) == len(learner.replay)
    assert restarted.counters == counters
    for k, v in learner.online.state_dict().items():
        assert torch.equal(v, restarted.online.state_dict()[k])


def test_a_resumed_run_restarts_a_learner_from_the_checkpoint_it_resumed_from(tmp_path):
    """Not from fresh weights, and not from a checkpoint of another run that shares the
    run directory."""
    config, spec, _ = make_record(tmp_path / "old")
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    learner.add(actor.collect(10))
    for _ in range(4):
        learner.step(learner.sample())
    resume = {**learner.state_dict(), "source": str(tmp_path / "a" / "ckpt-0000000004.pt"),
              "replay": None}
    storage = RunStorage(tmp_path / "shared")
    (storage.local / "checkpoints").mkdir(parents=True)
    (storage.local / "checkpoints" / "ckpt-0000099999.pt").write_bytes(b"another run's")
    record = RunRecord(config, spec, storage, Reporter(config, storage.local), resume)
    state, counters, source = record.restart_state(Counters(env_steps=10**6))
    assert source == "the checkpoint it resumed from (ckpt-0000000004.pt)"
    assert counters.updates == 4 and counters.env_steps == 10**6
    for k, v in learner.online.state_dict().items():
        assert torch.equal(v, state["network"][k])
    assert record.newest_checkpoint() == tmp_path / "a" / "ckpt-0000000004.pt"


def test_a_crash_between_the_replay_and_its_checkpoint_keeps_the_last_pair(
        tmp_path, monkeypatch):
    """The replay is written first and older ones are deleted only once the new checkpoint
    is on disk: a driver killed in between resumes from the previous checkpoint with the
    replay saved with it."""
    config, spec, record = make_record(tmp_path, "replay.save_with_checkpoints=true")
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    learner.add(actor.collect(10))

    def checkpoint_now() -> dict:
        learner.step(learner.sample())
        state = learner.state_dict()
        state["replay"] = learner.replay_state()
        return state

    record.checkpoint(checkpoint_now())
    saved_size = len(learner.replay)
    learner.add(actor.collect(10))

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt  # the process dies here, after the replay's write

    monkeypatch.setattr("qfleet.runs.record.save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        record.checkpoint(checkpoint_now())
    folder = record.run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ckpt-0000000001.pt", "replay-0000000001.pt", "replay-0000000002.pt"]
    state = load_run_state(record.run_dir)
    assert state["counters"]["updates"] == 1
    assert state["replay"] is not None and state["replay"]["size"] == saved_size
    monkeypatch.undo()  # the resumed run's next checkpoint leaves only its own replay
    record.checkpoint(checkpoint_now())
    assert sorted(p.name for p in folder.glob("replay*")) == ["replay-0000000003.pt"]


def test_a_replay_that_cannot_be_written_costs_the_replay_not_the_checkpoint(
        tmp_path, monkeypatch):
    config, spec, record = make_record(tmp_path, "replay.save_with_checkpoints=true")
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    learner.add(actor.collect(10))
    learner.step(learner.sample())
    folder = record.run_dir / "checkpoints"
    folder.mkdir(parents=True)
    # A replay of another timeline at the same update count (a crash, then a restart).
    (folder / "replay-0000000001.pt").write_bytes(b"from before the crash")
    (folder / "replay-0000000000.pt.tmp").write_bytes(b"cut short")

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("qfleet.runs.record.save_replay", full_disk)
    state = learner.state_dict()
    state["replay"] = learner.replay_state()
    record.checkpoint(state)
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-0000000001.pt"]
    assert load_run_state(record.run_dir)["replay"] is None
