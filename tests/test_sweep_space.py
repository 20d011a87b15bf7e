"""Sweep files checked against the config schema before anything starts (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from qfleet.config import ConfigError, load_config
from qfleet.driver.placement import in_bundle, trial_bundles
from qfleet.sweep.space import MUTABLE, load_sweep, trial_config
from qfleet.sweep.tuner import SweepPlan, check_plan
from tests.conftest import CONFIGS, own_ray

BASE = load_config(CONFIGS / "cartpole.yaml", ["actors.num_actors=1"])


def sweep(tmp_path: Path, text: str, scheduler: str = "fifo", base=BASE):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return load_sweep(path, base, scheduler)


def refused(tmp_path: Path, text: str, scheduler: str = "fifo", base=BASE) -> str:
    with pytest.raises(ConfigError) as err:
        sweep(tmp_path, text, scheduler, base)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_shipped_sweep_loads_and_its_spaces_become_tune_domains():
    s = load_sweep(CONFIGS / "sweeps" / "cartpole.yaml", BASE, "asha")
    keys = [space.key for space in s.searched]
    assert "learner.lr" in keys and "stop.time_s" not in keys  # a plain value is fixed
    params = s.param_space()
    assert params["stop.time_s"] == 150
    assert params["learner.lr"].sample() > 0
    assert s.fixed() == {"stop.time_s": 150}


def test_asha_cuts_at_the_budget_the_sweep_fixes(tmp_path):
    """The sweep's plain values are the trials' base config (what `qfleet.tune` plans)."""
    from qfleet.sweep.tuner import scheduler

    s = sweep(tmp_path, "learner.lr: {loguniform: [1.0e-4, 1.0e-3]}\nstop.time_s: 160\n")
    base = trial_config(BASE.to_dict(), s.fixed())
    asha = scheduler(SweepPlan(base, s, "asha", 4, None, 4))
    assert asha._time_attr == "train_time_s" and asha._max_t == 160


def test_randint_includes_both_ends_and_pbt_stays_inside_the_ranges(tmp_path):
    s = sweep(tmp_path, "learner.target_update_every: {randint: [3, 5]}\n"
                        "learner.lr: {uniform: [1.0e-4, 1.0e-3]}\n", "pbt")
    domain = s.param_space()["learner.target_update_every"]
    assert {domain.sample() for _ in range(300)} == {3, 4, 5}
    assert s.clamp({"learner.target_update_every": 6.2, "learner.lr": 2e-3}) == {
        "learner.target_update_every": 5, "learner.lr": 1e-3}


def test_a_trial_config_sets_the_sampled_keys():
    cfg = trial_config(BASE.to_dict(), {"learner.lr": 5e-4, "network.hidden": [32]})
    assert cfg.learner.lr == 5e-4 and cfg.network.hidden == (32,)
    assert cfg.learner.n_step == BASE.learner.n_step


@pytest.mark.parametrize(("text", "fragment"), [
    ("learner.lrr: {loguniform: [1.0e-4, 1.0e-3]}\n", "learner.lrr: unknown key"),
    ("learner.lr: {loguniform: [0, 1.0e-3]}\n", "loguniform needs 0 < low"),
    ("learner.lr: {uniform: [1.0e-3, 1.0e-4]}\n", "uniform needs low < high"),
    ("learner.n_step: {randint: [1, 2.5]}\n", "randint needs two integers"),
    ("learner.lr: {normal: [0, 1]}\n", "expected one of choice, uniform, loguniform, randint"),
    ("learner.lr: {choice: []}\n", "choice needs a non-empty list"),
    ("learner.lr: [1.0e-3, 2.0e-3]\n", "{choice: [0.001, 0.002]}"),
    ("learner.lr: {uniform: [0.5, 2.0]}\n", "learner.lr: Input should be less than or equal"),
    # A combination the schema refuses, though each value alone is fine.
    ("replay.min_size: {choice: [100, 40000]}\nreplay.capacity: {choice: [30000, 50000]}\n",
     "replay.min_size (40000) exceeds replay.capacity (30000)"),
    ("actors.num_actors: auto\nlearner.lr: {choice: [1.0e-3]}\n",
     "a sweep trial is a fixed placement group"),
    ("actors.num_actors: {choice: [1, 2]}\n",
     "actors.num_actors shapes every trial's placement group"),
    ("stop.time_s: 60\n", "no search space"),
    ("learner.target_update_every: {uniform: [25, 100]}\n",
     "learner.target_update_every takes whole numbers; sample it with {randint: [25, 100]}"),
    ("- learner.lr\n", "expected a mapping of dotted config keys"),
])
def test_a_bad_sweep_is_one_line_naming_what_is_wrong(tmp_path, text, fragment):
    assert fragment in refused(tmp_path, text)


def test_pbt_refuses_keys_that_cannot_change_mid_run(tmp_path):
    message = refused(tmp_path, "learner.n_step: {choice: [3, 5]}\n", "pbt")
    assert "learner.n_step cannot change mid-run" in message and "learner.lr" in message
    assert "network.hidden" not in MUTABLE
    sweep(tmp_path, "learner.lr: {loguniform: [1.0e-4, 1.0e-3]}\n"
                    "learner.n_step: 5\n", "pbt")  # a fixed value is the same for all


def test_an_auto_fleet_is_refused_in_a_sweep(tmp_path):
    base = load_config(CONFIGS / "cartpole.yaml", ["actors.num_actors=auto"])
    assert "give a number of actors" in refused(
        tmp_path, "learner.lr: {loguniform: [1.0e-4, 1.0e-3]}\n", base=base)


def test_asha_needs_a_budget_to_cut_at(tmp_path):
    base = load_config(CONFIGS / "cartpole.yaml", ["stop.time_s=null"])
    s = sweep(tmp_path, "learner.lr: {loguniform: [1.0e-4, 1.0e-3]}\n", base=base)
    with pytest.raises(ConfigError, match=r"set stop\.env_steps or stop\.time_s"):
        check_plan(SweepPlan(base, s, "asha", 4, None, 4))
    check_plan(SweepPlan(base, s, "fifo", 4, None, 4))


@pytest.mark.slow  # a local Ray
def test_a_trial_places_each_part_in_its_own_bundle():
    with own_ray(num_cpus=3):
        config = load_config(CONFIGS / "cartpole.yaml", ["actors.num_actors=2",
                                                         "learner.device=cpu"])
        bundles = trial_bundles(config)
        assert bundles == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
        group = ray.util.placement_group(bundles)
        opts = in_bundle({"num_cpus": 1, "scheduling_strategy": "SPREAD"}, group, 2)
        strategy = opts["scheduling_strategy"]
        assert strategy.placement_group == group
        assert strategy.placement_group_bundle_index == 2
        assert in_bundle({"num_cpus": 1}, None, 2) == {"num_cpus": 1}


def test_a_trial_config_the_env_cannot_take_is_refused_before_ray_starts(tmp_path):
    """What `qfleet train` refuses for one config, `qfleet tune` refuses for any corner."""
    import qfleet

    path = tmp_path / "sweep.yaml"
    path.write_text("network.kind: {choice: [mlp, nature_cnn]}\n")
    with pytest.raises(ConfigError, match=r"^sweep sweep\.yaml: .*nature_cnn"):
        qfleet.tune(CONFIGS / "cartpole.yaml", path, run_dir=tmp_path / "s")
    assert not ray.is_initialized() and not (tmp_path / "s").exists()


def test_a_failed_trial_is_ranked_last_and_never_best(tmp_path):
    from qfleet.sweep.results import TrialRow, ordered, write_best

    def row(trial, ended, mean, steps=1000):
        return TrialRow(trial, ended, mean, None, steps, 10, 1.0, "", {"learner.lr": 1e-3})

    rows = [row("a", "learner_lost", 500.0), row("b", "error: boom", 480.0),
            row("c", "sweep", 200.0), row("d", "target_return", 200.0, steps=500)]
    assert [r.failed for r in rows] == [True, True, False, False]
    assert [r.trial for r in ordered(rows)] == ["d", "c", "a", "b"]
    best = write_best(ordered(rows), BASE.to_dict(), tmp_path / "best.yaml")
    assert best is not None and best.trial == "d"  # the equal return in fewer env steps
    assert load_config(tmp_path / "best.yaml").learner.lr == 1e-3
