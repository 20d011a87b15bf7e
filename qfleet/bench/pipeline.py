"""`qfleet bench pipeline`: transitions/s from N actors into the learner's replay through a
real Ray (local or given), and the CPU time each transition costs the learner and the
actors. The learner only ingests (no updates), so its CPU time per transition is the
crossing's cost there."""

from __future__ import annotations

import os
import time
from typing import Any

from qfleet.bench.common import cpu_seconds
from qfleet.config import load_config


def run(seconds: float, actors: int = 2, env_id: str = "CartPole-v1",
        address: str | None = None, actor_resources: dict[str, float] | None = None,
        ) -> dict[str, Any]:
    import ray

    from qfleet.actors.actor import Actor
    from qfleet.actors.worker import RemoteActor
    from qfleet.driver.placement import connect_ray
    from qfleet.envs import env_spec
    from qfleet.learner.worker import RemoteLearner

    config = load_config(None, [f"env.id={env_id}", f"actors.num_actors={actors}",
                                "stop.time_s=3600", "replay.capacity=200000",
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
        if len(first.actor_pids) >= actors or time.monotonic() > deadline:
            break
    pids = [first.learner_pid, *first.actor_pids.values()]
    cpu0, lcpu0 = cpu_seconds(pids), cpu_seconds([first.learner_pid])
    t_start = time.perf_counter()
    time.sleep(seconds)
    last = ray.get(learner.stats.remote())
    dt = time.perf_counter() - t_start
    cpu1, lcpu1 = cpu_seconds(pids), cpu_seconds([first.learner_pid])
    ray.get(learner.stop.remote())
    ray.wait(runs, num_returns=len(runs), timeout=10)
    ray.shutdown()
    moved = last.counters.transitions - first.counters.transitions
    actor_us = ((cpu1 - cpu0) - (lcpu1 - lcpu0)) / max(moved, 1) * 1e6
    learner_us = (lcpu1 - lcpu0) / max(moved, 1) * 1e6
    return {"bench": "pipeline", "env": env_id, "actors": actors,
            "actor_nodes": len(last.actor_nodes),
            "transitions_per_s": moved / dt,
            "env_steps_per_s": (last.counters.env_steps - first.counters.env_steps) / dt,
            "learner_cpu_us_per_transition": learner_us,
            "actor_cpu_us_per_transition": actor_us,
            "actor_inprocess_cpu_us_per_transition": local_us,
            "crossing_cpu_us_per_transition": learner_us + max(actor_us - local_us, 0.0),
            "cpus": os.cpu_count()}


def describe(result: dict[str, Any]) -> list[str]:
    return [f"{result['actors']} actors on {result['actor_nodes']} node(s) -> learner replay: "
            f"{result['transitions_per_s']:,.0f} transitions/s "
            f"({result['env_steps_per_s']:,.0f} env steps/s)",
            f"CPU per transition: learner {result['learner_cpu_us_per_transition']:.1f} us, "
            f"actors {result['actor_cpu_us_per_transition']:.1f} us (acting alone "
            f"{result['actor_inprocess_cpu_us_per_transition']:.1f} us); crossing actor->"
            f"learner {result['crossing_cpu_us_per_transition']:.1f} us"]
