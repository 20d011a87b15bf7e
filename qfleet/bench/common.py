"""What several benchmarks share: interleaved rate measurement, the Atari bench config,
the bare vector env, and the processes of a `qfleet train` run started as a subprocess."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qfleet.config import Config, load_config

ATARI = "ALE/SpaceInvaders-v5"


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of repeated `fn()` calls (each returns its item count)."""
    fn()  # warm-up: lazy allocations, first-call costs
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        n += fn()
    return n / elapsed


def interleaved(*fns: Callable[[], int], seconds: float, rounds: int = 3) -> list[float]:
    """Median rates of each fn, measured in alternation so machine noise hits all."""
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, r in zip(fns, rates, strict=True):
            r.append(rate(fn, seconds / rounds))
    return [statistics.median(r) for r in rates]


def atari_config(overrides: list[str]) -> Config:
    return load_config(None, [f"env.id={ATARI}", "stop.env_steps=1", "network.kind=nature_cnn",
                              *overrides])


def bare_stepper(config: Config, envs: int, seed: int) -> tuple[Any, Callable[[], int]]:
    """The bare vector env with random actions: the limit actors are measured against."""
    from qfleet.envs import make_vec_env

    vec = make_vec_env(config.env, envs, seed=seed)
    vec.reset(seed=seed)
    rng = np.random.default_rng(seed)

    def step() -> int:
        vec.step(rng.integers(0, vec.num_actions, envs))
        return envs

    return vec, step


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


ROLES = {"ray::LearnerWorker": "learner", "ray::ActorWorker": "actor",
         "ray::EvaluatorWorker": "evaluator", "raylet": "raylet", "gcs_server": "gcs"}


def role(proc: Any) -> str | None:
    """Which part of a run a process is, from its command line (None: not one of ours)."""
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # the process ended meanwhile
        return None
    for marker, name in ROLES.items():
        if marker in cmd:
            return name
    return None


def run_processes(driver_pid: int, wanted: str) -> list[int]:
    """Pids of one run's processes in role `wanted`: the descendants of its driver, whose
    embedded Ray starts them, so another run's processes are never picked."""
    import psutil

    try:
        family = psutil.Process(driver_pid).children(recursive=True)
    except psutil.Error:
        return []
    return [p.pid for p in family if role(p) == wanted]


def start_training(args: list[str], run_dir: str | Path, watch: bool = True,
                   env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`qfleet train ARGS --run-dir RUN_DIR` as a subprocess (in `env`: RAY_ADDRESS joins
    a cluster). Watched, its output is piped and this returns once its start line
    (`qfleet: <env> | ...`) is printed; otherwise its output is discarded."""
    out = subprocess.PIPE if watch else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "qfleet.cli", "train", *map(str, args),
                             "--run-dir", str(run_dir)], stdout=out, env=env,
                            stderr=subprocess.STDOUT if watch else subprocess.DEVNULL, text=True)
    if proc.stdout is not None:
        for line in proc.stdout:
            if line.startswith("qfleet:"):
                break
    return proc


def scalars(run_dir: str | Path, tag: str) -> list[Any]:
    """A TensorBoard scalar series of a run directory (empty if never written)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc.Scalars(tag) if tag in acc.Tags()["scalars"] else []
