"""`qfleet bench chaos`'s plan and its reading of a run, without a run (the real chaos runs
are in tests/test_failures.py)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from qfleet.bench.chaos import _analyse, schedule


def test_the_kills_are_spread_over_the_first_60_percent_at_least_5_s_apart():
    plan = schedule(100.0, kills=4, learner_kills=2, seed=3)
    times = [at for at, _ in plan]
    assert sorted(v for _, v in plan) == ["actor", "actor", "learner", "learner"]
    assert times == sorted(times) and times[0] >= 8.0 and times[-1] <= 60.0
    assert all(b - a >= 5.0 for a, b in pairwise(times))
    assert plan == schedule(100.0, kills=4, learner_kills=2, seed=3)  # a seed's schedule


def test_a_run_that_ended_before_its_first_kill_is_reported_not_a_crash(tmp_path: Path):
    report = _analyse(tmp_path, 1, [], [], checkpoint_every=200)
    assert report["kills"] == [] and report["kills_survived"] == 0
    assert report["exit_code"] == 1
