"""`qfleet bench soak`: a real training run while the RSS and private memory of every one
of its processes (driver, learner, actors, evaluator, raylet, GCS) and the object store's
shared memory are sampled; each one's slope in MiB/min after the replay is full must be
flat."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import numpy as np

from qfleet.bench.common import role, scalars, start_training


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    t = np.array([p[0] for p in points]) / 60.0
    y = np.array([p[1] for p in points])
    return float(np.polyfit(t, y, 1)[0])


def _memory_mib(proc: Any) -> tuple[float, float]:
    """RSS and private memory (USS) of a process. RSS also counts the pages of Ray's
    shared object store that the process touched, which are bounded by the store."""
    info = proc.memory_full_info()
    return info.rss / 2**20, info.uss / 2**20


def run(seconds: float, config_path: str = "configs/spaceinvaders-cpu.yaml",
        capacity: int = 30_000) -> dict[str, Any]:
    """Run a real training for `seconds` and sample the RSS and private memory of every
    process (driver, learner, actors, evaluator, raylet, GCS) and the object store's
    shared memory; report each one's slope in MiB/min while training goes on after the
    replay is full (the part that must be flat; the final checkpoint is left out)."""
    import tempfile

    import psutil

    run_dir = tempfile.mkdtemp(prefix="qfleet-soak-")
    driver = start_training([config_path, f"stop.time_s={seconds}",
                             f"replay.capacity={capacity}",
                             f"replay.min_size={min(5000, capacity)}", "eval.every_s=120",
                             # actors at full speed, so the replay is full within minutes
                             "actors.num_actors=2", "learner.replay_ratio=null",
                             "eval.episodes=2"], run_dir, watch=False)
    rss: dict[str, list[tuple[float, float]]] = {}
    private: dict[str, list[tuple[float, float]]] = {}
    start = time.monotonic()
    while driver.poll() is None:
        now = time.time()
        by_role: dict[str, tuple[float, float]] = {}
        try:
            by_role["driver"] = _memory_mib(psutil.Process(driver.pid))
            # Only this run's processes: the driver's embedded Ray is its descendants.
            family = psutil.Process(driver.pid).children(recursive=True)
        except psutil.Error:
            break
        for proc in family:
            name = role(proc)
            if name is not None:
                key = f"{name}:{proc.pid}" if name == "actor" else name
                with contextlib.suppress(psutil.Error):
                    r, u = _memory_mib(proc)
                    old_r, old_u = by_role.get(key, (0.0, 0.0))
                    by_role[key] = (old_r + r, old_u + u)
        shm = psutil.disk_usage("/dev/shm").used / 2**20
        by_role["object_store_shm"] = (shm, shm)
        for key, (r, u) in by_role.items():
            rss.setdefault(key, []).append((now, r))
            private.setdefault(key, []).append((now, u))
        time.sleep(5.0)
    driver.wait()
    sizes = scalars(run_dir, "replay/size")
    full_at = next((e.wall_time for e in sizes if e.value >= capacity), None)
    train_end = sizes[-1].wall_time if sizes else float("inf")

    def steady(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [p for p in points if full_at is not None and full_at <= p[0] <= train_end]

    def slopes(series: dict[str, list[tuple[float, float]]], half: bool) -> dict[str, Any]:
        out = {}
        for key, points in series.items():
            window = steady(points)
            slope = _slope_per_min(window[len(window) // 2:] if half else window)
            out[key] = None if slope is None else round(slope, 3)
        return out

    def last(series: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
        return {k: round((steady(v) or v)[-1][1], 1) for k, v in series.items()}

    with open(f"{run_dir}/soak_samples.json", "w") as f:
        json.dump({"replay_full_at": full_at, "train_end": train_end, "rss_mib": rss,
                   "private_mib": private}, f)
    return {"bench": "soak", "config": config_path, "seconds": time.monotonic() - start,
            "replay_capacity": capacity, "replay_full_after_s":
                None if full_at is None or not sizes else full_at - sizes[0].wall_time,
            "rss_mib_last": last(rss), "private_mib_last": last(private),
            "rss_mib_at_exit": {k: round(v[-1][1], 1) for k, v in rss.items()},
            "rss_slope_mib_per_min_after_full": slopes(rss, half=False),
            "rss_slope_mib_per_min_second_half": slopes(rss, half=True),
            "private_slope_mib_per_min_after_full": slopes(private, half=False),
            "private_slope_mib_per_min_second_half": slopes(private, half=True),
            "run_dir": run_dir, "exit_code": driver.returncode}


def describe(result: dict[str, Any]) -> list[str]:
    def mib_per_min(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}"

    lines = [f"soak: {result['seconds']:.0f} s of {result['config']}, replay of "
             f"{result['replay_capacity']:,} full after {result['replay_full_after_s']} s; "
             "slopes in MiB/min while training after the replay is full",
             f"  {'process':<18} {'RSS MiB':>9} {'slope':>7} {'2nd half':>8}   "
             f"{'private MiB':>11} {'slope':>7} {'2nd half':>8}"]
    for key in result["rss_mib_last"]:
        lines.append(
            f"  {key:<18} {result['rss_mib_last'][key]:>9,.1f} "
            f"{mib_per_min(result['rss_slope_mib_per_min_after_full'][key]):>7} "
            f"{mib_per_min(result['rss_slope_mib_per_min_second_half'][key]):>8}   "
            f"{result['private_mib_last'][key]:>11,.1f} "
            f"{mib_per_min(result['private_slope_mib_per_min_after_full'][key]):>7} "
            f"{mib_per_min(result['private_slope_mib_per_min_second_half'][key]):>8}")
    return lines
