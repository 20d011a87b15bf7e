"""A sweep on Ray Tune: its scheduler, one placement group per trial, the run (or its
resume), and what it leaves in the sweep directory.

```
SWEEP_DIR/sweep.json     what was asked (config, sweep, scheduler): --resume checks it
SWEEP_DIR/trials/<id>/   each trial's qfleet run directory (TensorBoard, checkpoints,
                         summary.json): `tensorboard --logdir SWEEP_DIR` shows them all
SWEEP_DIR/tune/          Ray Tune's experiment state and the trials' checkpoints
SWEEP_DIR/trials.csv, best.yaml
```
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from qfleet.config import Config, ConfigError
from qfleet.errors import RunExistsError
from qfleet.runs.storage import RunStorage
from qfleet.sweep.results import TrialRow, rank, write_best, write_trials_csv
from qfleet.sweep.space import Sweep
from qfleet.sweep.trial import METRIC, FleetTrial

SCHEDULERS = ("fifo", "asha", "pbt")
ASHA_RUNGS = 16
"""ASHA's first rung at 1/16 of the budget, then 1/4 (reduction factor 4)."""
TUNE_DIR = "tune"
KEEP_CHECKPOINTS = 2
"""Tune checkpoints kept per trial under fifo and ASHA (a resume takes the newest). PBT
keeps them all: a paused trial may be restored, later, from any of them."""


@dataclass(frozen=True)
class SweepPlan:
    config: Config
    """The config every trial starts from (overrides applied)."""
    sweep: Sweep
    scheduler: str
    trials: int
    max_concurrent: int | None
    perturb_every: int
    """PBT: evaluations between a trial's exploit/explore steps."""

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "sweep": self.sweep.to_dict(),
                "scheduler": self.scheduler, "trials": self.trials,
                "max_concurrent": self.max_concurrent, "perturb_every": self.perturb_every}

    def trial_cpus(self) -> float:
        a = self.config.actors
        return int(a.num_actors) * a.num_cpus + 1

    def concurrency(self) -> int:
        """Trials meant to run at once: `--max-concurrent`, else PBT's whole population
        (it compares trials as they run), else one."""
        if self.max_concurrent is not None:
            return min(self.max_concurrent, self.trials)
        return self.trials if self.scheduler == "pbt" else 1


def check_plan(plan: SweepPlan) -> None:
    """What the schedulers need from the config (ConfigError: one line, exit 2)."""
    if plan.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler: expected one of {', '.join(SCHEDULERS)} "
                          f"(got {plan.scheduler!r})")
    if plan.trials < 1:
        raise ConfigError(f"--trials: expected at least 1 (got {plan.trials})")
    if plan.max_concurrent is not None and plan.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent: expected at least 1 (got {plan.max_concurrent})")
    if plan.perturb_every < 1:
        raise ConfigError(f"--perturb-every: expected at least 1 (got {plan.perturb_every})")
    stop = plan.config.stop
    if plan.scheduler == "asha" and stop.env_steps is None and stop.time_s is None:
        raise ConfigError("--scheduler asha: stops trials at fractions of their budget; set "
                          "stop.env_steps or stop.time_s")
    if plan.scheduler == "pbt" and plan.trials < 2:
        raise ConfigError("--scheduler pbt: a population needs at least 2 trials")


def scheduler(plan: SweepPlan) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if plan.scheduler == "asha":
        stop = plan.config.stop
        # Env steps compare trials fairly on a busy machine; else training time, as the
        # fleet's own stop.time_s counts it (start-up excluded, carried across restores).
        attr, max_t = (("env_steps", stop.env_steps) if stop.env_steps is not None
                       else ("train_time_s", stop.time_s))
        assert max_t is not None
        return ASHAScheduler(time_attr=attr, max_t=max_t, grace_period=max_t / ASHA_RUNGS,
                             reduction_factor=4)
    if plan.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="evaluations", perturbation_interval=plan.perturb_every,
            hyperparam_mutations=plan.sweep.mutations(), custom_explore_fn=plan.sweep.clamp,
            quantile_fraction=0.25, resample_probability=0.25,
            require_attrs=False)  # no greedy return before a trial's first evaluation
    return FIFOScheduler()


def _trainable(plan: SweepPlan, root: str) -> Any:
    from ray import tune

    from qfleet.driver.placement import trial_bundles

    # An empty first bundle: the trial's own driver holds no CPU; it runs in bundle 0
    # beside the learner (placement.LEARNER_BUNDLE), and actor i in bundle 1 + i.
    resources = tune.PlacementGroupFactory([{}, *trial_bundles(plan.config)])
    every = plan.perturb_every if plan.scheduler == "pbt" else 1
    params = tune.with_parameters(FleetTrial, base=plan.config.to_dict(), sweep_dir=root,
                                  checkpoint_every=every)
    return tune.with_resources(params, resources)


def run_sweep(plan: SweepPlan, storage: RunStorage, resume: bool) -> dict[str, Any]:
    """Run (or resume) the sweep on the connected Ray; write `trials.csv` and `best.yaml`.
    Returns `sweep_dir`, `trials` (rows, best first), `searched` (the swept keys), `best`
    (trial, return, params, `best.yaml`), `interrupted`, `errors` (trials that failed)."""
    check_fits(plan)
    # Each trial writes its own TensorBoard files; Tune's copies would double every curve.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A trial reports its greedy return only once it has one (see FleetTrial._metrics).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    local = storage.local
    local.mkdir(parents=True, exist_ok=True)
    root = storage.uri or str(local.resolve())
    path = f"{root}/{TUNE_DIR}"
    trainable = _trainable(plan, root)  # absolute: Tune runs each trial in a folder of its own
    if resume:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        (local / "sweep.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
        storage.sync()
        tuner = tune.Tuner(
            trainable, param_space=plan.sweep.param_space(),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", num_samples=plan.trials,
                scheduler=scheduler(plan), max_concurrent_trials=plan.max_concurrent,
                reuse_actors=False, trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(
                name=TUNE_DIR, storage_path=root, verbose=1,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=None if plan.scheduler == "pbt" else KEEP_CHECKPOINTS,
                    checkpoint_at_end=True),
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback()]))
    results = tuner.fit()
    rows = rank(results)
    write_trials_csv(rows, plan.sweep, local / "trials.csv")
    best = write_best(rows, plan.config.to_dict(), local / "best.yaml")
    storage.sync()
    finished = sum(r.ended != "unfinished" for r in rows)
    failed = sum(r.failed for r in rows)
    return {"sweep_dir": str(storage), "trials": [asdict(r) for r in rows],
            "searched": [s.key for s in plan.sweep.searched],
            "best": _best(best, storage), "interrupted": finished < plan.trials,
            "errors": failed}


def _best(best: TrialRow | None, storage: RunStorage) -> dict[str, Any] | None:
    if best is None:
        return None
    return {"trial": best.trial, METRIC: best.eval_return_mean, "params": best.params,
            "config": f"{storage.uri or storage.local}/best.yaml", "run_dir": best.run_dir}


def check_sweep_dir(storage: RunStorage, plan: SweepPlan, resume: bool) -> None:
    """A new sweep never mixes with an old one's trials; a resumed one is the same sweep
    (Ray Tune restores its own scheduler and settings, whatever the command says now)."""
    if not resume:  # asked of the URI itself: its staging copy is not fetched
        if storage.read_text("sweep.json") is not None:
            raise RunExistsError(f"--run-dir {storage}: holds a sweep already (continue it "
                                 "with --resume, or choose another directory)")
        if storage.read_text("config.yaml") is not None:
            raise RunExistsError(f"--run-dir {storage}: holds a training run; a sweep "
                                 "never writes into it (choose another directory)")
        return
    storage.fetch()
    found = storage.local / "sweep.json"
    if not found.is_file():
        raise ConfigError(f"--resume: {storage} holds no sweep (no sweep.json)")
    asked, saved = plan.to_dict(), json.loads(found.read_text())
    for key, value in asked.items():
        if saved.get(key) != value:
            raise ConfigError(f"--resume: {storage} is a sweep with another {key} "
                              f"({saved.get(key)!r} there); resume it with the config, "
                              "sweep file and options it started with")


def check_fits(plan: SweepPlan) -> None:
    """Refuse a trial that no cluster without an autoscaler could ever place (a
    `PlacementError` line, exit 2), rather than queue it forever."""
    import ray

    from qfleet.driver.placement import autoscaler_present, check_placeable, shape, trial_bundles

    autoscaler = autoscaler_present()
    check_placeable(plan.config, autoscaler)
    if autoscaler:
        return
    total = ray.cluster_resources()
    need: dict[str, float] = {}
    for bundle in trial_bundles(plan.config):
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
    if any(total.get(key, 0.0) + 1e-6 < value for key, value in need.items()):
        from qfleet.errors import PlacementError

        raise PlacementError(f"a trial needs {shape(need)} (its learner and "
                           f"{plan.config.actors.num_actors} actors) and the cluster has "
                           f"{shape({k: total.get(k, 0.0) for k in need})}, with no "
                           "autoscaler to add nodes (fewer actors: actors.num_actors=...)")
