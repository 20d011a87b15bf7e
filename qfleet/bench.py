"""`qfleet bench`: each figure we publish, next to its limit measured in the same run.

Benchmarks, not tests: they print numbers and never assert. `actors` and `learner` compare
our code with the bare loop it wraps on the same core(s) and report the ratio; `replay`
reports bytes per stored Atari transition; `pipeline` measures transitions/s into the
learner's replay through a real local Ray.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from qfleet.config import Config, load_config

ATARI = "ALE/SpaceInvaders-v5"


def _rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of repeated `fn()` calls (each returns its item count)."""
    fn()  # warm-up: lazy allocations, first-call costs
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        n += fn()
    return n / elapsed


def _interleaved(*fns: Callable[[], int], seconds: float, rounds: int = 3) -> list[float]:
    """Median rates of each fn, measured in alternation so machine noise hits all."""
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, r in zip(fns, rates, strict=True):
            r.append(_rate(fn, seconds / rounds))
    return [statistics.median(r) for r in rates]


def _atari_config(overrides: list[str]) -> Config:
    return load_config(None, [f"env.id={ATARI}", "stop.env_steps=1", "network.kind=nature_cnn",
                              *overrides])


def _bare_stepper(config: Config, envs: int, seed: int) -> tuple[Any, Callable[[], int]]:
    """The bare vector env with random actions: the limit actors are measured against."""
    from qfleet.envs import make_vec_env

    vec = make_vec_env(config.env, envs, seed=seed)
    vec.reset(seed=seed)
    rng = np.random.default_rng(seed)

    def step() -> int:
        vec.step(rng.integers(0, vec.num_actions, envs))
        return envs

    return vec, step


def bench_envs(seconds: float, envs: int = 16, threads: int = 2) -> dict[str, Any]:
    """ALE vector env vs one plain Gymnasium env with the same preprocessing."""
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    config = _atari_config([f"env.env_threads={threads}"])
    vec, vec_step = _bare_stepper(config, envs, seed=0)

    gym.register_envs(ale_py)
    single = FrameStackObservation(AtariPreprocessing(
        gym.make(ATARI, frameskip=1), frame_skip=4, noop_max=30), 4)
    single.reset(seed=0)

    def single_step() -> int:
        _, _, term, trunc, _ = single.step(single.action_space.sample())
        if term or trunc:
            single.reset()
        return 1

    vec_rate, single_rate = _interleaved(vec_step, single_step, seconds=seconds)
    vec.close()
    single.close()
    return {"bench": "envs", "env": ATARI, "envs": envs, "threads": threads,
            "vector_steps_per_s": vec_rate, "single_env_steps_per_s": single_rate,
            "ratio": vec_rate / single_rate}


def bench_actors(seconds: float, envs: int = 16, threads: int = 2) -> dict[str, Any]:
    """One Actor (inference, ε-greedy, n-step, frame streams) as it runs in a fleet vs the
    bare vector env with `threads` emulator threads, i.e. on the same cores."""
    from qfleet.actors.actor import Actor
    from qfleet.envs import env_spec

    config = _atari_config([f"actors.envs_per_actor={envs}", "actors.num_actors=1",
                            "learner.n_step=3", "network.dueling=true"])
    spec = env_spec(config.env)
    actor = Actor(config, spec, 0, seed=0)
    bare, bare_step = _bare_stepper(_atari_config([f"env.env_threads={threads}"]), envs, 1)
    # The same envs on only the actor's emulator threads: how much of its own emulation
    # speed the actor keeps with inference and bookkeeping beside it.
    own = actor.emulator_threads
    bare_own, bare_own_step = _bare_stepper(_atari_config([f"env.env_threads={own}"]), envs, 2)

    def actor_chunk() -> int:
        return actor.collect(4).env_steps

    actor_rate, bare_rate, own_rate = _interleaved(actor_chunk, bare_step, bare_own_step,
                                                   seconds=seconds)
    result = {"bench": "actors", "env": ATARI, "envs": envs, "threads": threads,
              "actor_batch": actor.envs.batch_size,
              "actor_emulator_threads": actor.emulator_threads,
              "actor_inference_dtype": str(actor.net.compute_dtype).removeprefix("torch."),
              "torch_threads": torch.get_num_threads(),
              "actor_steps_per_s": actor_rate, "bare_env_steps_per_s": bare_rate,
              "ratio": actor_rate / bare_rate,
              "bare_env_own_threads_steps_per_s": own_rate,
              "ratio_own_threads": actor_rate / own_rate}
    actor.close()
    bare.close()
    bare_own.close()
    return result


def bench_learner(seconds: float, batch_size: int = 32, device: str = "auto",
                  replay: str = "prioritized") -> dict[str, Any]:
    """Learner.step (sampling, priorities, target sync, publishing) vs a bare torch loop."""
    from qfleet.actors.actor import Actor
    from qfleet.envs import env_spec
    from qfleet.learner.learner import Learner, make_adam, pick_device
    from qfleet.learner.loss import dqn_loss

    dev = pick_device(device)
    config = _atari_config([f"learner.batch_size={batch_size}", f"replay.kind={replay}",
                            "replay.capacity=20000", "replay.min_size=1000",
                            "learner.double_dqn=true", "learner.loss=huber",
                            "learner.grad_clip=10", "learner.target_update_every=1000",
                            "network.dueling=true", "learner.publish_every=50",
                            "actors.num_actors=1", "actors.envs_per_actor=16"])
    spec = env_spec(config.env)
    learner = Learner(config, spec, dev)
    actor = Actor(config, spec, 0, seed=0)
    while len(learner.replay) < 4000:
        learner.add(actor.collect(16))
    actor.close()
    batch, _, _ = learner.replay.sample(batch_size)

    # The bare loop: the same network, loss, clipping and Adam on one fixed batch.
    online = copy.deepcopy(learner.online)
    target = copy.deepcopy(learner.target)
    opt = make_adam(online.parameters(), 1e-4, 1.5e-4, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def bare_update(k: int = 10) -> int:
        for _ in range(k):
            loss, _ = dqn_loss(online, target, *batch, double=True, kind="huber")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(online.parameters(), 10.0)
            opt.step()
        sync()
        return k

    def learner_update(k: int = 10) -> int:
        for _ in range(k):
            learner.step()
            if learner.updates % config.learner.publish_every == 0:
                learner.get_weights()
        sync()
        return k

    ours, bare = _interleaved(learner_update, bare_update, seconds=seconds)
    return {"bench": "learner", "device": str(dev), "batch_size": batch_size,
            "network": "nature_cnn+dueling", "replay": replay,
            "learner_updates_per_s": ours, "bare_updates_per_s": bare, "ratio": ours / bare}


def bench_replay(seconds: float, capacity: int = 100_000, device: str = "cpu"
                 ) -> dict[str, Any]:
    """Bytes per stored Atari transition (measured from the allocated tensors), insert and
    sample throughput of the prioritized replay."""
    from qfleet.actors.actor import Actor
    from qfleet.envs import env_spec
    from qfleet.learner.replay import DenseStorage, ReplayBuffer, make_replay

    config = _atari_config(["actors.num_actors=1", "actors.envs_per_actor=16",
                            "learner.n_step=3"])
    spec = env_spec(config.env)
    dev = torch.device(device)
    replay = make_replay("prioritized", capacity, spec.obs_shape, spec.obs_dtype, dev,
                         frame_refs=True, num_streams=16, window=64)
    assert isinstance(replay, ReplayBuffer)
    total = replay.nbytes()
    actor = Actor(config, spec, 0, seed=0)
    chunks = [actor.collect(16) for _ in range(8)]
    actor.close()
    i = 0

    def insert() -> int:
        nonlocal i
        c = chunks[i % len(chunks)]
        i += 1
        replay.add(c.transitions, c.frames)
        return len(c.transitions)

    insert_rate = _rate(insert, seconds / 2)
    while len(replay) < min(capacity, 20_000):
        insert()

    def sample() -> int:
        _, keys, _ = replay.sample(512)
        replay.update_priorities(keys, torch.rand(512, device=dev))
        return 512

    sample_rate = _rate(sample, seconds / 2)
    return {"bench": "replay", "capacity": capacity, "device": device,
            "bytes_per_transition": total / capacity, "limit_bytes": 8192,
            "dense_bytes_per_transition": DenseStorage.bytes_per_item(spec.obs_shape,
                                                                      spec.obs_dtype),
            "insert_transitions_per_s": insert_rate,
            "sample_transitions_per_s": sample_rate}


def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def bench_pipeline(seconds: float, actors: int = 2, env_id: str = "CartPole-v1",
                   address: str | None = None, actor_resources: dict | None = None,
                   ) -> dict[str, Any]:
    """Transitions/s from N actors into the learner's replay on a local (or given) Ray,
    and the CPU time each transition costs the learner and the actors. The learner only
    ingests (no updates), so its CPU time per transition is the crossing's cost there."""
    import ray

    from qfleet.actors.actor import Actor
    from qfleet.envs import env_spec
    from qfleet.fleet import connect_ray
    from qfleet.remote import RemoteActor, RemoteLearner

    config = load_config(None, [f"env.id={env_id}", f"actors.num_actors={actors}",
                                "stop.env_steps=1", "replay.capacity=200000",
                                "replay.min_size=200000", "actors.envs_per_actor=16",
                                "actors.chunk_steps=16", "learner.inbox_chunks=16"])
    spec = env_spec(config.env)
    # The same acting work in this process, with nothing sent: the actor's own cost.
    local = Actor(config, spec, 0, seed=0)
    t0 = time.process_time()
    n = 0
    while time.process_time() - t0 < 2.0:
        n += len(local.collect(16).transitions)
    local_us = (time.process_time() - t0) / n * 1e6
    local.close()

    connect_ray(address, actors + 1)
    cfg = config.to_dict()
    learner = RemoteLearner.options(num_cpus=1).remote(cfg, spec, None)
    opts: dict[str, Any] = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
    if actor_resources:
        opts["resources"] = actor_resources
    fleet = [RemoteActor.options(**opts).remote(cfg, spec, i, i + 1, learner)
             for i in range(actors)]
    runs = [a.run.remote() for a in fleet]
    deadline = time.monotonic() + 120
    while True:  # every actor up and streaming
        time.sleep(1.0)
        first = ray.get(learner.stats.remote())
        if len(first["pids"]) > actors or time.monotonic() > deadline:
            break
    pids = list(first["pids"].values())
    learner_pid = first["pids"]["learner"]
    cpu0, lcpu0, t_start = _cpu_seconds(pids), _cpu_seconds([learner_pid]), time.perf_counter()
    time.sleep(seconds)
    last = ray.get(learner.stats.remote())
    dt = time.perf_counter() - t_start
    cpu1, lcpu1 = _cpu_seconds(pids), _cpu_seconds([learner_pid])
    ray.get(learner.stop.remote())
    ray.wait(runs, num_returns=len(runs), timeout=10)
    nodes = len(last["actor_nodes"])
    ray.shutdown()
    moved = last["transitions"] - first["transitions"]
    actor_us = ((cpu1 - cpu0) - (lcpu1 - lcpu0)) / max(moved, 1) * 1e6
    learner_us = (lcpu1 - lcpu0) / max(moved, 1) * 1e6
    return {"bench": "pipeline", "env": env_id, "actors": actors, "actor_nodes": nodes,
            "transitions_per_s": moved / dt,
            "env_steps_per_s": (last["env_steps"] - first["env_steps"]) / dt,
            "learner_cpu_us_per_transition": learner_us,
            "actor_cpu_us_per_transition": actor_us,
            "actor_inprocess_cpu_us_per_transition": local_us,
            "crossing_cpu_us_per_transition": learner_us + max(actor_us - local_us, 0.0),
            "cpus": os.cpu_count()}


_ROLES = {"ray::LearnerWorker": "learner", "ray::ActorWorker": "actor",
          "ray::EvaluatorWorker": "evaluator", "raylet": "raylet", "gcs_server": "gcs"}


def _role(proc: Any) -> str | None:
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # the process ended meanwhile
        return None
    for marker, role in _ROLES.items():
        if marker in cmd:
            return role
    return None


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


def bench_soak(seconds: float, config_path: str = "configs/spaceinvaders-cpu.yaml",
               capacity: int = 30_000) -> dict[str, Any]:
    """Run a real training for `seconds` and sample the RSS and private memory of every
    process (driver, learner, actors, evaluator, raylet, GCS) and the object store's
    shared memory; report each one's slope in MiB/min while training goes on after the
    replay is full (the part that must be flat; the final checkpoint is left out)."""
    import subprocess
    import sys
    import tempfile

    import psutil
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tempfile.mkdtemp(prefix="qfleet-soak-")
    cmd = [sys.executable, "-m", "qfleet.cli", "train", config_path, f"stop.time_s={seconds}",
           f"replay.capacity={capacity}", f"replay.min_size={min(5000, capacity)}",
           "eval.every_s=120", "eval.episodes=2", "--run-dir", run_dir]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
            role = _role(proc)
            if role is not None:
                key = f"{role}:{proc.pid}" if role == "actor" else role
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
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    sizes = acc.Scalars("replay/size") if "replay/size" in acc.Tags()["scalars"] else []
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


def bench_recovery(seconds: float, kill_after_s: float = 20.0) -> dict[str, Any]:
    """Time from SIGKILL of one actor's process to recovered fleet throughput (CartPole,
    actors unthrottled so throughput is the actors'), read from the run's TensorBoard."""
    import signal
    import subprocess
    import sys
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tempfile.mkdtemp(prefix="qfleet-recovery-")
    total = max(seconds, kill_after_s + 20.0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qfleet.cli", "train", "configs/cartpole.yaml",
         "stop.target_return=null", f"stop.time_s={total}", "learner.replay_ratio=null",
         "--run-dir", run_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("qfleet:"):
            break
    time.sleep(kill_after_s)
    pids = subprocess.run(["pgrep", "-f", "ray::ActorWorker"], capture_output=True,
                          text=True).stdout.split()
    t_kill = time.time()
    if pids:
        os.kill(int(pids[0]), signal.SIGKILL)
    proc.stdout.read()
    proc.wait()
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    rates = acc.Scalars("perf/env_steps_per_s")
    before = [e.value for e in rates if t_kill - 10 <= e.wall_time < t_kill]
    base = statistics.fmean(before) if before else float("nan")
    after = [(e.wall_time - t_kill, e.value) for e in rates if e.wall_time >= t_kill]
    recovered = next((dt for dt, v in after if v >= 0.9 * base), None)
    return {"bench": "recovery", "killed_pid": int(pids[0]) if pids else None,
            "baseline_env_steps_per_s": base,
            "min_env_steps_per_s_after_kill": min((v for _, v in after[:10]), default=None),
            "recovered_90pct_after_s": recovered, "run_dir": run_dir}


BENCHES: dict[str, Callable[..., dict[str, Any]]] = {
    "envs": bench_envs, "actors": bench_actors, "learner": bench_learner,
    "replay": bench_replay, "pipeline": bench_pipeline, "soak": bench_soak,
    "recovery": bench_recovery,
}


def describe(result: dict[str, Any]) -> list[str]:
    """Human lines: each figure next to its limit."""
    name = result["bench"]
    if name == "envs":
        return [f"ALE vector env ({result['envs']} envs, {result['threads']} threads): "
                f"{result['vector_steps_per_s']:,.0f} steps/s",
                f"one Gymnasium env, same preprocessing: "
                f"{result['single_env_steps_per_s']:,.0f} steps/s "
                f"(vector/single {result['ratio']:.2f}x)"]
    if name == "actors":
        return [f"actor, inference included ({result['envs']} envs in batches of "
                f"{result['actor_batch']}, {result['actor_emulator_threads']} emulator "
                f"thread(s), {result['actor_inference_dtype']} inference): "
                f"{result['actor_steps_per_s']:,.0f} env steps/s",
                f"bare vector env, same envs, {result['threads']} threads: "
                f"{result['bare_env_steps_per_s']:,.0f} env steps/s",
                f"ratio {result['ratio']:.2f} (target >= 0.80)",
                f"bare vector env on the actor's {result['actor_emulator_threads']} emulator "
                f"thread(s): {result['bare_env_own_threads_steps_per_s']:,.0f} env steps/s "
                f"(actor keeps {result['ratio_own_threads']:.2f} of it)"]
    if name == "learner":
        return [f"learner on {result['device']}, batch {result['batch_size']}, "
                f"{result['replay']} replay: {result['learner_updates_per_s']:,.1f} updates/s",
                f"bare torch loop, same network/loss/optimizer: "
                f"{result['bare_updates_per_s']:,.1f} updates/s",
                f"ratio {result['ratio']:.2f} (target >= 0.90)"]
    if name == "replay":
        return [f"Atari replay: {result['bytes_per_transition']:,.0f} bytes per stored "
                f"transition (limit {result['limit_bytes']:,}; two dense stacks would be "
                f"{result['dense_bytes_per_transition']:,})",
                f"insert {result['insert_transitions_per_s']:,.0f} transitions/s, "
                f"sample+update {result['sample_transitions_per_s']:,.0f} transitions/s"]
    if name == "recovery":
        back = result["recovered_90pct_after_s"]
        return [f"one actor SIGKILLed: throughput {result['baseline_env_steps_per_s']:,.0f} -> "
                f"{result['min_env_steps_per_s_after_kill'] or 0:,.0f} env steps/s; back to 90 % "
                + ("never" if back is None else f"after {back:.1f} s")]
    if name == "soak":
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
    return [f"{result['actors']} actors on {result['actor_nodes']} node(s) -> learner replay: "
            f"{result['transitions_per_s']:,.0f} transitions/s "
            f"({result['env_steps_per_s']:,.0f} env steps/s)",
            f"CPU per transition: learner {result['learner_cpu_us_per_transition']:.1f} us, "
            f"actors {result['actor_cpu_us_per_transition']:.1f} us (acting alone "
            f"{result['actor_inprocess_cpu_us_per_transition']:.1f} us); crossing actor->"
            f"learner {result['crossing_cpu_us_per_transition']:.1f} us"]
