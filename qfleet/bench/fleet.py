"""`qfleet bench fleet`: the real fleet of a config on this machine's Ray, measured whole.

It runs the driver's own `Fleet` in this process (placement, learner, actors, the loop),
watches what the driver sees each second, and measures a window once every actor streams
and the learner updates. Then, on the same Ray and cores, as many bare vector envs as
there were actors step random actions at once, one per actor's CPUs: the emulator's limit
that the fleet's env steps are held against. With an Atari env the learner is then
measured alone (`qfleet bench learner` at the same batch), for the learner's share of its
own speed while the fleet fed it.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from qfleet.bench.common import role

SETTLE_S = 3.0
"""Seconds after every actor streams and the learner updates (caught up with the warm-up's
transitions, with a replay ratio) before the window opens."""
START_TIMEOUT_S = 600.0


class GpuMonitor:
    """Polls `nvidia-smi` on a thread: the fraction of samples in which a kernel ran (the
    GPU busy fraction) and the most GPU memory in use, over all processes. Inert where
    there is no `nvidia-smi`."""

    QUERY = ("nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
             "--format=csv,noheader,nounits")

    def __init__(self, period_s: float = 0.5) -> None:
        self.available = shutil.which("nvidia-smi") is not None
        self.period_s = period_s
        self.busy: list[float] = []
        self.memory_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> GpuMonitor:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _poll(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5)
                util, memory = out.stdout.strip().splitlines()[0].split(",")[:2]
                self.busy.append(float(util) / 100.0)
                self.memory_mib = max(self.memory_mib, float(memory))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue

    def result(self) -> dict[str, Any]:
        return {"gpu_busy_fraction": statistics.mean(self.busy) if self.busy else None,
                "gpu_memory_used_mib": self.memory_mib if self.busy else None}


def host_memory() -> dict[str, Any]:
    """Memory of this process and every process it started (the local Ray's): the sum of
    resident sizes, and of unique sizes (shared object-store pages counted once), by role."""
    me = psutil.Process()
    by_role: dict[str, float] = {}
    rss = uss = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        uss += info.uss
        name = "driver" if proc.pid == me.pid else (role(proc) or "ray")
        by_role[name] = by_role.get(name, 0.0) + info.uss / 2**20
    return {"host_rss_mib": rss / 2**20, "host_uss_mib": uss / 2**20,
            "host_uss_mib_by_role": {k: round(v, 1) for k, v in sorted(by_role.items())}}


def _bare_steps(config: dict[str, Any], threads: int, seed: int, seconds: float) -> float:
    """A Ray task: the bare vector env of an actor on this task's CPUs; steps/s."""
    from qfleet.bench.common import bare_stepper, rate
    from qfleet.config import config_from_dict

    cfg = config_from_dict(config)
    cfg = cfg.model_copy(update={"env": cfg.env.model_copy(update={"env_threads": threads})})
    vec, step = bare_stepper(cfg, cfg.actors.envs_per_actor, seed)
    try:
        return rate(step, seconds)
    finally:
        vec.close()


def bare_rates(config: Any, count: int, seconds: float) -> list[float]:
    """`count` bare vector envs at once, each holding an actor's CPUs: their steps/s."""
    import ray

    cpus = config.actors.num_cpus
    task = ray.remote(_bare_steps).options(num_cpus=cpus, scheduling_strategy="SPREAD")
    refs = [task.remote(config.to_dict(), max(1, math.floor(cpus)), 100 + i, seconds)
            for i in range(count)]
    return list(ray.get(refs))


def run(seconds: float, config: str, overrides: list[str] | None = None,
        bare_seconds: float = 10.0, learner_alone: bool | None = None) -> dict[str, Any]:
    import ray

    from qfleet.api import prepare_run
    from qfleet.driver.fleet import Fleet
    from qfleet.driver.placement import connect_ray
    from qfleet.driver.reporter import Reporter
    from qfleet.runs.record import StopReason

    given = list(overrides or [])
    overrides = [*given, f"stop.time_s={START_TIMEOUT_S + seconds + 60:g}",
                 "stop.env_steps=null", "stop.target_return=null", "eval.every_s=1e9",
                 "eval.video_every_s=null", "log.checkpoint_every_updates=1000000000",
                 "replay.save_on_exit=false"]
    workdir = Path(tempfile.mkdtemp(prefix="qfleet-bench-fleet-"))
    prepared = prepare_run(config, overrides, run_dir=workdir / "run")
    cfg, spec = prepared.config, prepared.spec
    count = cfg.actors.num_actors
    connect_ray(None, (count if isinstance(count, int) else 1) * cfg.actors.num_cpus + 1,
                prepared.modules)
    samples: list[tuple[float, Any]] = []

    class Watch(Reporter):
        def scalars(self, stats: Any, rates: Any, step: int) -> None:
            super().scalars(stats, rates, step)
            samples.append((time.monotonic(), stats))

    from rich.console import Console

    reporter = Watch(cfg, prepared.storage.local, console=Console(file=io.StringIO()))
    fleet = Fleet(cfg, spec, prepared.storage, command_start=time.monotonic(),
                  reporter=reporter)
    window: dict[str, Any] = {}
    fleet.prepare()  # refuses the unplaceable (LearnerError: exit 2) before anything starts
    try:
        fleet.start()
        cfg = fleet.config  # the fleet's size and devices, resolved
        actors = int(cfg.actors.num_actors)

        lc = cfg.learner

        def streaming() -> bool:
            """Every actor sent chunks and the learner updates; with a replay ratio, it
            also caught up with the warm-up's transitions (the actors wait until then)."""
            if not samples:
                return False
            stats = samples[-1][1]
            c = stats.counters
            caught_up = (lc.replay_ratio is None or
                         c.updates * lc.batch_size >= 0.8 * lc.replay_ratio * c.transitions)
            return len(stats.chunks_by_actor) >= actors and c.updates > 0 and caught_up

        deadline = time.monotonic() + START_TIMEOUT_S
        fleet.advance(until=lambda: streaming() or time.monotonic() > deadline)
        if not streaming():
            raise RuntimeError(f"the fleet did not stream within {START_TIMEOUT_S:g} s "
                               f"({fleet.record.stopped_by or 'still starting'})")
        settle = time.monotonic() + SETTLE_S
        fleet.advance(until=lambda: time.monotonic() > settle)
        first = len(samples)
        with GpuMonitor() as gpu:
            end = time.monotonic() + seconds
            fleet.advance(until=lambda: time.monotonic() > end)
            window = _window(cfg, samples[first - 1:])
            window.update(host_memory())
        window.update(gpu.result())
    finally:
        fleet.record.stop(StopReason.MEASURED, "benchmark window ended")
        fleet.end()
    stopped = fleet.summary and fleet.summary.get("stopped_by")
    if stopped != StopReason.MEASURED:
        ray.shutdown()
        raise RuntimeError(f"the fleet ended before its window: {stopped}")
    bare = bare_rates(cfg, actors, bare_seconds)
    ray.shutdown()
    shutil.rmtree(workdir, ignore_errors=True)
    bare_each = statistics.median(bare)
    result = {"bench": "fleet", "config": str(config), "overrides": given,
              "env": cfg.env.id, "cpus": os.cpu_count(), "actors": actors,
              "envs_per_actor": cfg.actors.envs_per_actor, "actor_device": cfg.actors.device,
              "actor_gpu_share": cfg.actors.num_gpus if cfg.actors.device == "cuda" else None,
              "learner_device": fleet.sup.learner_device if fleet.sup else None,
              "batch_size": cfg.learner.batch_size, "seconds": seconds, **window,
              "bare_env_steps_per_s_per_actor": bare_each,
              "bare_env_steps_per_s_all_actors": sum(bare),
              "env_steps_ratio": window["env_steps_per_s"] / (bare_each * actors)}
    if learner_alone is None:
        learner_alone = spec.is_atari
    if learner_alone:
        from qfleet.bench import learner

        alone = learner.run(min(seconds, 9.0), batch_size=cfg.learner.batch_size,
                            device=cfg.learner.device, replay=cfg.replay.kind,
                            cuda_graph=cfg.learner.cuda_graph,
                            head=cfg.learner.distribution, noisy=cfg.network.noisy)
        result["learner_alone_updates_per_s"] = alone["learner_updates_per_s"]
        result["learner_fed_over_alone"] = (result["updates_per_s"]
                                            / alone["learner_updates_per_s"])
    return result


def _window(cfg: Any, samples: list[tuple[float, Any]]) -> dict[str, Any]:
    """Rates between the window's first and last sample of the driver's stats."""
    (t0, s0), (t1, s1) = samples[0], samples[-1]
    dt = t1 - t0
    c0, c1 = s0.counters, s1.counters
    updates, transitions = c1.updates - c0.updates, c1.transitions - c0.transitions
    lags = [s.learner.policy_lag for _, s in samples if s.learner.policy_lag is not None]
    inbox = [s.inbox for _, s in samples]
    devices = sorted(set(s1.actor_devices.values()))
    return {"window_s": dt,
            "env_steps_per_s": (c1.env_steps - c0.env_steps) / dt,
            "transitions_per_s": transitions / dt,
            "updates_per_s": updates / dt,
            "trained_samples_per_s": updates * cfg.learner.batch_size / dt,
            "replay_ratio_setting": cfg.learner.replay_ratio,
            "replay_ratio_held": (updates * cfg.learner.batch_size / transitions
                                  if transitions else None),
            "policy_lag_median": statistics.median(lags) if lags else None,
            "inbox_chunks_median": statistics.median(inbox),
            "actors_acting_on": devices,
            "actor_nodes": len(s1.actor_nodes)}


def describe(result: dict[str, Any]) -> list[str]:
    def fmt(value: Any, spec: str = ",.0f") -> str:
        return "n/a" if value is None else format(value, spec)

    ratio = result.get("replay_ratio_setting")
    lines = [
        f"fleet: {result['actors']} actors x {result['envs_per_actor']} envs acting on "
        f"{'/'.join(result['actors_acting_on'])}, learner on {result['learner_device']}, "
        f"{result['env']}, {result['window_s']:.0f} s window",
        f"env steps/s {fmt(result['env_steps_per_s'])} vs bare env "
        f"{fmt(result['bare_env_steps_per_s_per_actor'])}/s x {result['actors']} actors: "
        f"ratio {result['env_steps_ratio']:.2f} (target >= 0.80)",
        f"learner {fmt(result['updates_per_s'], ',.1f')} updates/s, "
        f"{fmt(result['trained_samples_per_s'])} samples/s; replay ratio held "
        f"{fmt(result['replay_ratio_held'], '.2f')}"
        + (f" (setting {ratio:g})" if ratio else " (no setting: as fast as it can)"),
        f"policy lag median {fmt(result['policy_lag_median'], '.1f')} versions; "
        f"GPU busy {fmt(result['gpu_busy_fraction'], '.2f')}, GPU memory "
        f"{fmt(result['gpu_memory_used_mib'])} MiB; host memory {result['host_uss_mib']:,.0f}"
        f" MiB unique ({result['host_rss_mib']:,.0f} MiB resident)",
    ]
    if "learner_alone_updates_per_s" in result:
        lines.append(f"learner alone (bench learner, batch {result['batch_size']}): "
                     f"{result['learner_alone_updates_per_s']:,.1f} updates/s; fed by the "
                     f"fleet {result['learner_fed_over_alone']:.2f} of it (target >= 0.90)")
    return lines
