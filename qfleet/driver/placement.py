"""Placement: connect to Ray, size the fleet from the cluster, and the Ray options that
put the learner, the actors and the evaluator where they belong.

Everything the cluster can never host is refused here, before anything waits forever.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ray
from ray.exceptions import RuntimeEnvSetupError
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from qfleet.config import Config, ConfigError
from qfleet.errors import PlacementError

AUTOSCALER_REPORT_WAIT_S = 10.0
"""How long a driver on a fresh head waits for the autoscaler's first report."""


def connect_ray(address: str | None, cpus_needed: float, modules: Sequence[Path] = ()
                ) -> None:
    """Join a cluster (`--address`, `RAY_ADDRESS`, `ray job submit`) or start a local one.
    `modules`: the user's own env modules, shipped to every worker on every node."""
    if ray.is_initialized():
        if modules:
            warnings.warn(f"Ray was started before qfleet: {', '.join(m.name for m in modules)}"
                          " must be importable on every node (ray.init(runtime_env="
                          "{'py_modules': [...]}) ships it)", stacklevel=2)
        return
    runtime_env = shipping(modules)
    try:
        _init(address, cpus_needed, runtime_env)
    except RuntimeEnvSetupError as err:  # the env modules could not be uploaded
        raise ConfigError(f"env module {', '.join(m.name for m in modules)} could not be "
                          f"shipped to the cluster: {str(err).strip().splitlines()[-1]}"
                          ) from None
    _cluster_errors_in_one_line()


def _cluster_errors_in_one_line() -> None:
    """Ray prints every cluster error it publishes (a node that died) on the driver's
    console with the last lines of the raylet's log: some 25 lines per lost node, on a
    run where nodes come and go for days. Keep the first line (the rest stays in Ray's
    session logs); the run's own lines say what it did about it."""
    import ray._private.worker as ray_worker  # Ray's error listener looks this up per call

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "qfleet_one_line", False):
        return

    def one_line(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            data = {**data, "lines": [next(iter(str(line).strip().splitlines()), "")
                                      for line in data.get("lines", [])]}
        original(data, ignore_prefix)

    one_line.qfleet_one_line = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = one_line


def _init(address: str | None, cpus_needed: float, runtime_env: dict[str, Any] | None
          ) -> None:
    # The console is the driver's: Ray's per-process log lines (each worker's ALE banner,
    # the raylet's notice of every killed worker) stay in Ray's session logs. What a worker
    # has to say reaches the driver as data (errors, learner notes) and is printed once.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False,
                 runtime_env=runtime_env)
        return
    # A local Ray schedules by logical CPUs; actors mostly wait on envs and the learner, so
    # the fleet may ask for more logical CPUs than the machine has cores.
    # address="local": a new embedded Ray even when a `ray start` cluster runs here too.
    ray.init(address="local", num_cpus=max(usable_cpus(), math.ceil(cpus_needed)),
             include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env=runtime_env)


def ray_answers(timeout_s: float = 1.0) -> bool:
    """Whether this driver's Ray (its GCS) still takes connections. A SIGTERM to the whole
    process group (`timeout`, a terminal's job control, some schedulers) kills an embedded
    Ray with the driver, and every call into a dead Ray waits a minute, then ends the
    process: an ending asks this first."""
    try:
        host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except Exception:  # not connected, no address, refused, timed out
        return False


def usable_cpus() -> int:
    """The cores this process may run on (a cpuset or `taskset` may allow fewer than the
    machine has): a local Ray's CPUs, so an `auto` fleet takes no core it cannot use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shipping(modules: Sequence[Path]) -> dict[str, Any] | None:
    """The runtime env that ships `modules`; none inside a job submitted with code of its
    own (`--working-dir`, `py_modules`), which already reaches every worker."""
    if not modules:
        return None
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}"))
    shipped = job.get("runtime_env") or {}
    if "working_dir" in shipped or "py_modules" in shipped:
        if "working_dir" not in shipped:  # Ray refuses a second py_modules list
            warnings.warn(f"this job ships its own py_modules; {', '.join(m.name for m in modules)}"
                          " must be among them to reach the workers", stacklevel=2)
        return None
    return {"py_modules": [str(m) for m in modules]}


def autoscaler_present(wait_s: float = AUTOSCALER_REPORT_WAIT_S) -> bool:
    """Whether Ray's autoscaler can add nodes to this cluster: v2 is on, or v1's monitor
    reports node types of a cluster config. Every head runs a v1 monitor; without an
    autoscaling config it is read-only, and its node types are `node_<id>`. A head started
    moments ago may not have reported yet: wait up to `wait_s` for the first report."""
    # Ray's own reading of its autoscaler state: no public API says this.
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + wait_s
    try:
        if is_autoscaler_v2(fetch_from_server=True):
            return True
        while (raw := _internal_kv_get(DEBUG_AUTOSCALING_STATUS)) is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        report = json.loads(raw).get("autoscaler_report") or {}
    except Exception:  # no KV access or another format: assume none, refuse what can't fit
        return False
    mapping = report.get("node_type_mapping") or {}
    return any(kind != f"node_{node}" for node, kind in mapping.items())


def standing_request() -> list[dict[str, float]]:
    """The bundles a v1 autoscaler was asked for and still holds (another run's, or one
    killed before it withdrew them); empty when none or not readable."""
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
        return list(json.loads(raw)) if raw else []
    except Exception:
        return []


def actor_bundle(config: Config) -> dict[str, float]:
    """The resources one actor holds (a GPU share once `resolve_actor_device` gave one)."""
    a = config.actors
    bundle = {"CPU": a.num_cpus, **a.resources}
    if a.device == "cuda" and a.num_gpus:
        bundle["GPU"] = a.num_gpus
    return bundle


def learner_bundle(config: Config) -> dict[str, float]:
    """The resources the learner holds, as `learner_options` asks for them."""
    opts = learner_options(config)
    bundle = {"CPU": float(opts["num_cpus"]), **opts.get("resources", {})}
    if opts.get("num_gpus"):
        bundle["GPU"] = float(opts["num_gpus"])
    return bundle


def bundles_in(free: dict[str, float], need: dict[str, float]) -> int:
    """How many bundles `need` the resources `free` hold (a small tolerance, as Ray keeps
    fractions in ten-thousandths)."""
    return max(0, min(math.floor(free.get(k, 0.0) / v + 1e-6) for k, v in need.items()
                      if v > 0))


def actors_that_fit(config: Config) -> int:
    """How many actors the cluster holds now beside the learner: node by node (an actor
    lives on one), and no more than what is free in all (other jobs may hold some)."""
    need, learner = actor_bundle(config), learner_bundle(config)
    free = dict(ray.available_resources())
    for key, value in learner.items():
        free[key] = free.get(key, 0.0) - value
    return min(sum(n.slots for n in actor_nodes(config)), bundles_in(free, need))


def resolve_fleet(config: Config, autoscaling: bool) -> Config:
    """Fix an `auto` fleet size: all of `max_actors` when an autoscaler can bring nodes for
    them, else what the cluster holds beside the learner (at least one)."""
    a = config.actors
    if a.num_actors != "auto":
        return config
    if autoscaling and a.max_actors is None:
        raise ConfigError("actors.num_actors=auto: this cluster has an autoscaler; set "
                          "actors.max_actors to the fleet to ask it for (or a number of actors)")
    n = a.max_actors if autoscaling else max(1, actors_that_fit(config))
    actors = a.model_copy(update={"num_actors": n, "max_actors": a.max_actors or 4 * n})
    return config.model_copy(update={"actors": actors})


class ActorNode(NamedTuple):
    """A node that can host actors: how many by its CPUs, and the GPU room on each of its
    GPUs once the learner took its share."""

    slots: int
    rooms: list[float]


def actors_fitting(nodes: Sequence[ActorNode], share: float) -> int:
    """Actors with a GPU share `share` each that the nodes hold: per node the fewer of its
    CPU slots and its GPU shares (Ray places a fractional share within one GPU)."""
    return sum(min(n.slots, sum(math.floor(r / share + 1e-6) for r in n.rooms))
               for n in nodes)


def gpu_share(nodes: Sequence[ActorNode], actors: int) -> float | None:
    """The largest share 1/k of a GPU such that `actors` actors fit on `nodes`; None when
    they never do."""
    if actors < 1 or sum(n.slots for n in nodes) < actors:
        return None
    for k in range(1, 10_000):
        if actors_fitting(nodes, 1.0 / k) >= actors:
            return 1.0 / k
    return None


def actor_nodes(config: Config) -> list[ActorNode]:
    """The alive nodes that can host an actor, with the learner (and its GPU share) taken
    out of the first node that can host it, where it will likely go."""
    a = config.actors
    learner = learner_bundle(config)
    placed, nodes = False, []
    for node in (dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")):
        room = [1.0] * math.floor(node.get("GPU", 0.0) + 1e-6)
        if not placed and bundles_in(node, learner) >= 1:
            placed = True
            for key, value in learner.items():
                node[key] -= value
            whole, part = divmod(learner.get("GPU", 0.0), 1.0)
            room = room[int(whole):]
            if part and room:
                room[0] -= part
        slots = bundles_in(node, {"CPU": a.num_cpus, **a.resources})
        if slots:
            nodes.append(ActorNode(slots, [r for r in room if r > 1e-6]))
    return nodes


def resolve_actor_device(config: Config, autoscaling: bool) -> Config:
    """Fix `actors.device` to `cpu` or `cuda` and each actor's GPU share. `auto` takes the
    GPU when no autoscaler adds nodes, every node that can host an actor has GPU room
    beside the learner, and all `num_actors` fit with their shares; `cuda` that cannot be
    placed so is refused (`PlacementError`, exit 2)."""
    a = config.actors
    if a.device == "cpu":
        return config
    if autoscaling:  # the nodes to come are unknown
        if a.device == "auto":
            return config.model_copy(update={"actors": a.model_copy(update={"device": "cpu"})})
        if a.num_gpus is None:
            raise PlacementError("actors.device: cuda on a cluster with an autoscaler needs "
                               "actors.num_gpus (each actor's GPU share)")
        return config
    count = int(a.num_actors) if isinstance(a.num_actors, int) else 1
    nodes = actor_nodes(config)
    everywhere = bool(nodes) and all(n.rooms for n in nodes)
    if a.num_gpus is not None:
        share = a.num_gpus if actors_fitting(nodes, a.num_gpus) >= count else None
    else:
        share = gpu_share(nodes, count)
    if share is None or (a.device == "auto" and not everywhere):
        if a.device == "cuda":
            raise PlacementError(
                f"actors.device: cuda requested but {count} actors"
                + (f" of GPU share {a.num_gpus:g}" if a.num_gpus else "")
                + " do not fit in the GPU room the learner leaves (learner.num_gpus below "
                  "1, fewer actors, or actors.device=cpu)")
        return config.model_copy(update={"actors": a.model_copy(update={"device": "cpu"})})
    actors = a.model_copy(update={"device": "cuda", "num_gpus": share})
    return config.model_copy(update={"actors": actors})


def check_placeable(config: Config, autoscaling: bool) -> None:
    """Refuse what no node of the cluster can ever host (PlacementError: exit code 2). With an
    autoscaler, a node type the cluster has none of yet may host it: the wait for it is
    bounded by `learner.start_timeout_s` and `actors.scale_timeout_s` instead."""
    if autoscaling:
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def fits(need: dict[str, float]) -> bool:
        return any(bundles_in(res, need) >= 1 for res in nodes)

    a, lc = config.actors, config.learner
    if not fits(actor_bundle(config)):
        raise PlacementError(f"actors: no node of the cluster has {a.num_cpus:g} CPU(s)"
                           + (f" and resources {a.resources} (a cluster config's node "
                              "labels? actors.resources={} runs them anywhere)"
                              if a.resources else ""))
    if lc.device == "cuda" and not fits({"GPU": lc.num_gpus}):
        raise PlacementError("learner.device: cuda requested but the cluster has no GPU")
    learner = learner_bundle(config)
    if not fits(learner):
        raise PlacementError(f"learner: no node of the cluster has {shape(learner)} "
                           "(learner.resources={} runs it anywhere)")


def shape(bundle: dict[str, float]) -> str:
    """A bundle in words: `1 CPU, 1 qfleet_actor`."""
    return ", ".join(f"{v:g} {k}" for k, v in bundle.items())


def learner_options(config: Config) -> dict[str, Any]:
    """One CPU, `learner.num_gpus` of a GPU when the config says cuda or the cluster has one
    (unless the config says cpu), and the config's extra resources."""
    opts: dict[str, Any] = {"num_cpus": 1}
    device = config.learner.device
    if device == "cuda" or (device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1):
        opts["num_gpus"] = config.learner.num_gpus
    if config.learner.resources:
        opts["resources"] = dict(config.learner.resources)
    return opts


def actor_options(config: Config) -> dict[str, Any]:
    """Spread over the nodes with free CPUs (and the config's labels, and GPU share, if
    any)."""
    a = config.actors
    opts: dict[str, Any] = {"num_cpus": a.num_cpus, "scheduling_strategy": "SPREAD"}
    if a.device == "cuda" and a.num_gpus:
        opts["num_gpus"] = a.num_gpus
    if a.resources:
        opts["resources"] = dict(a.resources)
    return opts


def evaluator_options(learner_node: str | None) -> dict[str, Any]:
    """No CPU of its own, beside the learner when it can: a worker node that leaves would
    take it along."""
    opts: dict[str, Any] = {"num_cpus": 0}
    if learner_node:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(learner_node, soft=True)
    return opts


LEARNER_BUNDLE = 0
"""In a sweep trial's placement group: the learner's bundle (the evaluator and the trial's
own driver, which hold no CPU, run beside it); actor `i` holds bundle `1 + i`."""


def trial_bundles(config: Config) -> list[dict[str, float]]:
    """The bundles of one sweep trial's placement group: the learner's, then one per actor."""
    return [learner_bundle(config)] + [actor_bundle(config)] * int(config.actors.num_actors)


def in_bundle(opts: dict[str, Any], group: PlacementGroup | None, index: int
              ) -> dict[str, Any]:
    """`opts` placed in bundle `index` of a trial's placement group (its node is the
    group's choice, not SPREAD's or a node affinity's); unchanged outside a trial."""
    if group is None:
        return opts
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index,
                                                placement_group_capture_child_tasks=False)
    return {**opts, "scheduling_strategy": strategy}
