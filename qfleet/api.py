"""The Python API: `train`, `evaluate` and `load_policy`, what the `qfleet` command does,
callable from a script, a notebook, or a thread that is not the main one (only the main
thread's Ctrl-C and SIGTERM are caught; elsewhere the caller stops the run).

Bad input raises a `qfleet.errors.QfleetError` (a `ValueError`) of the kind that failed
before anything starts, with the one line the command would print.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from qfleet.config import Config, ConfigError, apply_override, config_from_dict, load_config
from qfleet.runs.checkpoints import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    load_run_state,
)
from qfleet.runs.existing import Existing, check_video_dir
from qfleet.runs.storage import RunStorage

ConfigLike = str | os.PathLike[str] | dict[str, Any] | Config


# -- the pieces the command shares ---------------------------------------------------------------
def is_local(address: str | None) -> bool:
    """No cluster named (`address` or `RAY_ADDRESS`): the run starts its own local Ray."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def local_token_auth(address: str | None) -> None:
    """A local Ray with token auth said explicitly (Ray 2.60 turns it on for local clusters
    anyway, then warns that it did). Only before `ray` is imported: Ray reads the mode once,
    and the driver and the cluster it starts must agree; where a notebook imported Ray
    already, Ray's own default (token auth, the same on both sides) stands."""
    if is_local(address) and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def resolve_config(config: ConfigLike | None, overrides: Sequence[str] = ()) -> Config:
    """A config from a YAML path, a dict of sections or a `Config`, overrides applied."""
    if config is None:
        raise ConfigError("missing CONFIG: give a YAML config file (see configs/)")
    if isinstance(config, Config):
        if not overrides:
            return config
        config = config.to_dict()
    if isinstance(config, dict):
        data = copy.deepcopy(config)
        for override in overrides:
            apply_override(data, override)
        return config_from_dict(data)
    return load_config(config, list(overrides))


def default_run_dir(config: Config) -> Path:
    name = re.sub(r"[^A-Za-z0-9]+", "-", config.env.id).strip("-").lower()
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def build_network(config: Config, spec: Any) -> Any:
    """The config's Q-network for this env, or the config error that prevents it."""
    from qfleet.networks import build_q_network

    try:
        return build_q_network(config, spec)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_compatible(state: dict[str, Any], config: Config, net: Any) -> None:
    try:
        net.load_state_dict(state["network"])
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise CheckpointError(f"checkpoint does not match env {config.env.id!r} and this "
                              f"network: {first}") from None


class Prepared(NamedTuple):
    config: Config
    spec: Any
    storage: RunStorage
    resume: dict[str, Any] | None
    """The loaded checkpoint the run continues."""
    modules: list[Path]
    """The user's own env modules, beside the config or in the working directory, for Ray
    to ship to every worker."""


def user_modules(config: ConfigLike | None, cfg: Config) -> list[Path]:
    """The env's modules that live beside the config file or in the working directory,
    made importable here (the driver makes the env before Ray starts)."""
    from qfleet.envs import modules_beside

    folders = [Path.cwd()]
    if isinstance(config, str | os.PathLike):
        folders.insert(0, Path(config).resolve().parent)
    modules = modules_beside(cfg.env, folders)
    for folder in dict.fromkeys(str(m.parent) for m in modules):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    return modules


def prepare_run(config: ConfigLike | None, overrides: Sequence[str] = (), *,
                run_dir: str | os.PathLike[str] | None = None, address: str | None = None,
                resume: str | os.PathLike[str] | None = None) -> Prepared:
    """Everything that can be refused before Ray starts: config, env, checkpoint, memory."""
    from qfleet.envs import env_spec
    from qfleet.learner.learner import check_replay_fits, pick_device

    resume_state = None
    storage = RunStorage(run_dir) if run_dir is not None else None
    if resume is not None:
        source = RunStorage(resume)
        # Continued in place: the URI's files, not a dead driver's staging copy.
        source.fetch(fresh=storage is None or storage.target == source.target)
        local = source.local
        if not (local / "config.yaml").is_file():
            raise CheckpointError(f"--resume {str(resume)!r} is not a qfleet run directory "
                                  "(no config.yaml)")
        resume_state = load_run_state(local)
        config = config if config is not None else local / "config.yaml"
        cfg = resolve_config(config, overrides)
        storage = storage or source
    else:
        cfg = resolve_config(config, overrides)
    modules = user_modules(config, cfg)
    spec = env_spec(cfg.env)
    net = build_network(cfg, spec)
    if resume_state is not None:
        check_compatible(resume_state, cfg, net)
    if is_local(address):
        # A local run: the machine's cores and the learner's memory are knowable now.
        cores = os.cpu_count() or 1
        if cfg.actors.num_cpus > cores:
            raise ConfigError(f"actors.num_cpus: {cfg.actors.num_cpus:g} CPUs per actor, "
                              f"but this machine has {cores}")
        check_replay_fits(cfg, spec, pick_device(cfg.learner.device))
    return Prepared(cfg, spec, storage or RunStorage(default_run_dir(cfg)), resume_state,
                    modules)


# -- train ---------------------------------------------------------------------------------------
def train(config: ConfigLike | None, overrides: Sequence[str] | None = None, *,
          run_dir: str | os.PathLike[str] | None = None, address: str | None = None,
          resume: str | os.PathLike[str] | None = None,
          if_exists: str = "fail") -> dict[str, Any]:
    """Train until the config's stop condition; return the run's summary (what
    `summary.json` holds: `stopped_by`, `exit_code`, `eval_return_mean`, `checkpoint`, ...).

    `config`: a YAML path, a dict of sections or a `Config` (None with `resume`: the run's
    own). Joins the Ray cluster at `address` (or `RAY_ADDRESS`), or starts a local Ray and
    shuts it down at the end; a Ray this process had started already is left running.

    `if_exists`: what to do when `run_dir` already holds a run. `fail` (the default)
    refuses with `RunExistsError`; `resume` continues it from its newest checkpoint, as a
    retried job should, or returns its summary at once (with `already_ended: true`) when
    it ended on its target or budget.
    """
    start = time.monotonic()
    if resume is None and run_dir is not None:
        existing = _existing_run(run_dir, if_exists)
        if existing is not None and existing.ended:
            assert existing.summary is not None
            return {**existing.summary, "already_ended": True}
        if existing is not None and existing.checkpoints:
            resume = run_dir  # a run cut short before its first checkpoint starts over
    cfg, spec, storage, resume_state, modules = prepare_run(
        config, overrides or (), run_dir=run_dir, address=address, resume=resume)
    local_token_auth(address)
    import ray

    from qfleet.driver.fleet import Fleet
    from qfleet.driver.placement import connect_ray

    ours = not ray.is_initialized()
    count = cfg.actors.num_actors
    needed = (count if isinstance(count, int) else 1) * cfg.actors.num_cpus + 1
    try:
        connect_ray(address, needed, modules)
        return Fleet(cfg, spec, storage, command_start=start, resume=resume_state).run()
    finally:
        if ours and ray.is_initialized():
            ray.shutdown()


def _existing_run(run_dir: str | os.PathLike[str], if_exists: str) -> Existing | None:
    """The run already in `run_dir` that this command may continue (None: none there)."""
    from qfleet.runs.existing import IfExists, find_existing, refuse

    try:
        mode = IfExists(if_exists)
    except ValueError:
        raise ConfigError(f"--if-exists: expected fail or resume, got {if_exists!r}") from None
    storage = RunStorage(run_dir)
    existing = find_existing(storage)
    if existing is not None and mode is IfExists.FAIL:
        raise refuse(storage, existing)
    return existing


# -- sweeps ---------------------------------------------------------------------------------------
def tune(config: ConfigLike | None, sweep: str | os.PathLike[str],
         overrides: Sequence[str] | None = None, *, trials: int = 4, scheduler: str = "fifo",
         max_concurrent: int | None = None, perturb_every: int = 4,
         run_dir: str | os.PathLike[str] | None = None, address: str | None = None,
         resume: bool = False) -> dict[str, Any]:
    """Search the `sweep` file's spaces around `config` with Ray Tune: `trials` trials, each
    a whole fleet in a placement group of its own, under `scheduler` (`fifo`, `asha`: stop
    weak trials early, `pbt`: Population Based Training over qfleet's checkpoints).

    Writes the sweep directory (`run_dir`, a path or storage URI): a run directory per
    trial, `trials.csv`, `best.yaml`. `resume`: continue the interrupted sweep in `run_dir`.
    Returns `sweep_dir`, `trials` (best first), `searched`, `best` (its trial, return,
    params and `best.yaml`), `interrupted`, `errors`.
    """
    from qfleet.errors import LearnerError
    from qfleet.learner.learner import check_replay_fits, pick_device
    from qfleet.sweep.space import load_sweep, trial_config
    from qfleet.sweep.tuner import SweepPlan, check_plan, check_sweep_dir

    cfg, spec, _, _, modules = prepare_run(config, overrides or (), address=address)
    if resume and run_dir is None:
        raise ConfigError("--resume: give the sweep's --run-dir")

    def check_trial(trial: Config) -> None:  # what prepare_run checks, for any trial
        build_network(trial, spec)
        if is_local(address):
            try:
                check_replay_fits(trial, spec, pick_device(trial.learner.device))
            except LearnerError as err:
                raise ConfigError(str(err)) from None

    space = load_sweep(sweep, cfg, scheduler, check_trial)
    # The sweep's plain values are the trials' base: their budget is what ASHA cuts at.
    cfg = trial_config(cfg.to_dict(), space.fixed())
    plan = SweepPlan(cfg, space, scheduler, trials, max_concurrent, perturb_every)
    check_plan(plan)
    storage = RunStorage(run_dir if run_dir is not None else default_sweep_dir(cfg))
    check_sweep_dir(storage, plan, resume)
    local_token_auth(address)
    import ray

    from qfleet.driver.placement import connect_ray
    from qfleet.sweep.tuner import run_sweep

    ours = not ray.is_initialized()
    try:
        connect_ray(address, plan.trial_cpus() * plan.concurrency(), modules)
        return run_sweep(plan, storage, resume)
    finally:
        if ours and ray.is_initialized():
            ray.shutdown()


def default_sweep_dir(config: Config) -> Path:
    run = default_run_dir(config)
    return run.with_name(f"sweep-{run.name}")


# -- evaluate and act ----------------------------------------------------------------------------
class Policy:
    """A trained Q-network for acting outside qfleet: batches of observations in (as the
    run's env gives them, preprocessing done), numpy out, on the CPU. Q-values are expected
    values under a distributional head; a noisy network answers on its mean path, so the
    same observations always get the same answer."""

    def __init__(self, config: Config, spec: Any, net: Any, checkpoint: Path) -> None:
        """`net`: the config's Q-network with the checkpoint's weights loaded."""
        import torch

        from qfleet.networks import set_noise

        self.config, self.spec, self.checkpoint = config, spec, checkpoint
        self.net = net.eval().requires_grad_(False)
        set_noise(self.net, False)
        self.num_actions: int = spec.num_actions
        self.obs_shape: tuple[int, ...] = tuple(spec.obs_shape)
        self._torch = torch
        self._rng = np.random.default_rng()

    def q_values(self, obs_batch: Any) -> np.ndarray:
        """Q(s, ·) for each observation: shape (batch, num_actions)."""
        obs = np.asarray(obs_batch)
        if obs.shape[1:] != self.obs_shape:
            raise ValueError(f"expected a batch of observations of shape {self.obs_shape}, "
                             f"got an array of shape {obs.shape}")
        with self._torch.inference_mode():
            return self.net(self._torch.from_numpy(np.ascontiguousarray(obs))).numpy()

    def act(self, obs_batch: Any, epsilon: float = 0.0) -> np.ndarray:
        """Greedy actions, each replaced by a uniformly random one with probability
        `epsilon`: shape (batch,)."""
        from qfleet.actors.epsilon import explore

        return explore(self.q_values(obs_batch).argmax(axis=1), epsilon, self.num_actions,
                       self._rng)


def load_policy(checkpoint_or_run_dir: str | os.PathLike[str]) -> Policy:
    """The policy of a checkpoint file, a run directory (its newest checkpoint) or a run's
    storage URI."""
    from qfleet.envs import env_spec

    source = RunStorage(checkpoint_or_run_dir)
    source.fetch()
    file = find_checkpoint(source.local)
    state = load_checkpoint(file)
    config = config_from_dict(state["config"])
    spec = env_spec(config.env)
    net = build_network(config, spec)
    check_compatible(state, config, net)  # loads the weights, or says why they do not fit
    return Policy(config, spec, net, file)


def evaluate(checkpoint_or_run_dir: str | os.PathLike[str], episodes: int = 10,
             epsilon: float | None = None, *, protocol: str | None = None,
             video_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run the policy (near-)greedily for `episodes` episodes of its env, in-process, with
    the run's evaluation settings (`eval.epsilon`, `eval.protocol`) unless given here.
    `video_dir`: one mp4 per episode, from the full-resolution frames. Returns `Scores.to_dict()`
    (protocol, ε, return mean/std/sem, human-normalized mean, episodes) with `checkpoint`
    and, with videos, their paths."""
    from qfleet.envs import is_atari
    from qfleet.evaluation.evaluator import Evaluator, Scores

    if episodes < 1:
        raise ConfigError(f"episodes: expected at least 1, got {episodes}")
    if video_dir is not None:
        check_video_dir(Path(video_dir), checkpoint_or_run_dir)
    policy = load_policy(checkpoint_or_run_dir)
    config = policy.config
    if protocol is not None and not is_atari(config.env.id):
        raise ConfigError(f"--protocol: evaluation protocols are for Atari envs; "
                          f"{config.env.id!r} is evaluated as it trains")
    changes = {k: v for k, v in {"epsilon": epsilon, "protocol": protocol}.items()
               if v is not None}
    if changes:
        config = resolve_config(config, [f"eval.{k}={v}" for k, v in changes.items()])
    epsilon = config.eval.epsilon
    evaluator = Evaluator(config, policy.spec)
    weights = policy.net.state_dict()
    videos: list[str] = []
    if video_dir is None:
        results = evaluator.evaluate(weights, episodes, epsilon)
    else:
        out = Path(video_dir)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for i in range(1, episodes + 1):
            recording = evaluator.record(weights, epsilon)
            path = out / f"episode-{i:03d}.mp4"
            path.write_bytes(recording.mp4)
            results.append(recording.episode)
            videos.append(str(path))
    result = {"checkpoint": str(policy.checkpoint),
              **Scores.of(config, results, epsilon).to_dict()}
    return {**result, "videos": videos} if videos else result
