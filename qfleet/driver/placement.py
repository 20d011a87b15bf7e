"""Placement: connect to Ray, size the fleet from the cluster, and the Ray options that
put the learner, the actors and the evaluator where they belong.

Everything the cluster can never host is refused here, before anything waits forever.
"""

from __future__ import annotations

import math
import os
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from qfleet.config import Config
from qfleet.learner.learner import LearnerError


def connect_ray(address: str | None, cpus_needed: float) -> None:
    """Join a cluster (`--address`, `RAY_ADDRESS`, `ray job submit`) or start a local one."""
    if ray.is_initialized():
        return
    # The console is the driver's: Ray's per-process log lines (each worker's ALE banner,
    # the raylet's notice of every killed worker) stay in Ray's session logs. What a worker
    # has to say reaches the driver as data (errors, learner notes) and is printed once.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        return
    # A local Ray schedules by logical CPUs; actors mostly wait on envs and the learner, so
    # the fleet may ask for more logical CPUs than the machine has cores.
    # address="local": a new embedded Ray even when a `ray start` cluster runs here too.
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)),
             include_dashboard=False, logging_level="WARNING", log_to_driver=False)


def resolve_fleet(config: Config) -> Config:
    """Fix an `auto` fleet size from the cluster's free CPUs (one CPU kept for the learner)."""
    a = config.actors
    if a.num_actors != "auto":
        return config
    free = ray.available_resources().get("CPU", 0.0)
    n = max(1, int((free - 1.0) // a.num_cpus))
    actors = a.model_copy(update={"num_actors": n, "max_actors": a.max_actors or 4 * n})
    return config.model_copy(update={"actors": actors})


def check_placeable(config: Config) -> None:
    """Refuse what no node of the cluster can ever host (LearnerError: exit code 2)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def fits(need: dict[str, float]) -> bool:
        return any(all(res.get(k, 0.0) >= v for k, v in need.items()) for res in nodes)

    a, lc = config.actors, config.learner
    if not fits({"CPU": a.num_cpus, **a.resources}):
        raise LearnerError(f"actors: no node of the cluster has {a.num_cpus:g} CPU(s)"
                           + (f" and resources {a.resources}" if a.resources else ""))
    if lc.resources and not fits({"CPU": 1.0, **lc.resources}):
        raise LearnerError(f"learner.resources: no node of the cluster has {lc.resources}")
    if lc.device == "cuda" and not fits({"GPU": 1.0}):
        raise LearnerError("learner.device: cuda requested but the cluster has no GPU")


def learner_options(config: Config) -> dict[str, Any]:
    """One CPU, a whole GPU when the cluster has one (unless the config says cpu), and the
    config's extra resources."""
    opts: dict[str, Any] = {"num_cpus": 1}
    if config.learner.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1:
        opts["num_gpus"] = 1
    if config.learner.resources:
        opts["resources"] = dict(config.learner.resources)
    return opts


def actor_options(config: Config) -> dict[str, Any]:
    """Spread over the nodes with free CPUs (and the config's labels, if any)."""
    opts: dict[str, Any] = {"num_cpus": config.actors.num_cpus, "scheduling_strategy": "SPREAD"}
    if config.actors.resources:
        opts["resources"] = dict(config.actors.resources)
    return opts


def evaluator_options(learner_node: str | None) -> dict[str, Any]:
    """No CPU of its own, beside the learner when it can: a worker node that leaves would
    take it along."""
    opts: dict[str, Any] = {"num_cpus": 0}
    if learner_node:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(learner_node, soft=True)
    return opts
