"""The driver: starts the fleet, supervises it, reports, checkpoints and stops it.

The driver never touches transitions or weights in steady state: it pulls one small stats
dict from the learner per tick, restarts actors that died, launches greedy evaluations on
the newest published weights, and writes TensorBoard, checkpoints and `summary.json` into
the run directory on its own machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from qfleet.checkpoint import save_checkpoint, save_replay
from qfleet.config import Config, save_config
from qfleet.envs import EnvSpec
from qfleet.learner.learner import LearnerError
from qfleet.remote import RemoteActor, RemoteEvaluator, RemoteLearner
from qfleet.reporting import Reporter
from qfleet.storage import RunStorage
from qfleet.transitions import Episode

TICK_S = 0.25


class FleetError(RuntimeError):
    """The run cannot go on (the learner died, resources never appear)."""


@dataclass
class _State:
    env_steps: int = 0
    updates: int = 0
    episodes: int = 0
    actor_restarts: int = 0
    eval_mean: float | None = None
    eval_std: float | None = None
    time_to_target: float | None = None
    stopped_by: str = ""
    nodes: set[str] = field(default_factory=set)


def connect_ray(address: str | None, cpus_needed: float) -> None:
    """Join a cluster (`--address`, `RAY_ADDRESS`, `ray job submit`) or start a local one."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        return
    # A local Ray schedules by logical CPUs; actors mostly wait on envs and the learner, so
    # the fleet may ask for more logical CPUs than the machine has cores.
    # address="local": a new embedded Ray even when a `ray start` cluster runs here too.
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)),
             include_dashboard=False, logging_level="WARNING", log_to_driver=True)


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
    """Refuse, before anything waits forever, what no node of the cluster can ever host."""
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


def _learner_start_error(err: Exception) -> Exception:
    """Turn a learner that died in its constructor back into the one-line error it raised."""
    match = re.search(r"LearnerError: (.+)", str(err))
    if match:
        return LearnerError(match.group(1).strip())
    return FleetError(f"the learner failed to start: {str(err).strip().splitlines()[0]}")


class Fleet:
    def __init__(self, config: Config, spec: EnvSpec, run_dir: Path, *,
                 command_start: float, resume: dict[str, Any] | None = None,
                 reporter: Reporter | None = None, storage: RunStorage | None = None) -> None:
        self.storage = storage
        self.config, self.spec, self.run_dir = config, spec, run_dir
        self.command_start = command_start
        self.resume = resume
        counters = (resume or {}).get("counters", {})
        self.state = _State(env_steps=int(counters.get("env_steps", 0)),
                            updates=int(counters.get("updates", 0)),
                            episodes=int(counters.get("episodes", 0)))
        self.reporter = reporter or Reporter(config, run_dir, start_step=self.state.env_steps)
        self._stop_requested = False
        self._cfg = config.to_dict()
        self._auto = False
        self._chunks_by_actor: dict[int, int] = {}
        self._chunks_at_start: dict[int, int] = {}
        self._last_grow = 0.0
        self._nonfinite_seen = 0
        self.learner_node: str | None = None
        self._last_sync = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------
    def _start(self) -> None:
        """Create learner, actors and evaluator at once: their start-ups overlap."""
        c = self.config
        gpus = ray.cluster_resources().get("GPU", 0)
        learner_opts: dict[str, Any] = {"num_cpus": 1}
        if c.learner.device != "cpu" and gpus >= 1:
            learner_opts["num_gpus"] = 1
        if c.learner.resources:
            learner_opts["resources"] = dict(c.learner.resources)
        resume_state = None
        if self.resume is not None:
            resume_state = {k: self.resume.get(k) for k in ("network", "target", "optimizer",
                                                            "counters", "replay")}
        self.learner = RemoteLearner.options(**learner_opts).remote(
            self._cfg, self.spec, resume_state)
        self.actors: dict[int, Any] = {}
        self.runs: dict[ray.ObjectRef, int] = {}
        for i in range(c.actors.num_actors):
            self._start_actor(i)
        try:
            self.learner_device, self.learner_node = ray.get(self.learner.placement.remote())
        except ray.exceptions.RayActorError as err:
            raise _learner_start_error(err) from None
        self._start_evaluator()

    def _start_evaluator(self) -> None:
        """The evaluator lives on the learner's node when it can: a worker node that leaves
        would take it along."""
        near_learner = NodeAffinitySchedulingStrategy(self.learner_node, soft=True)
        self.evaluator = RemoteEvaluator.options(
            num_cpus=0, scheduling_strategy=near_learner).remote(self._cfg, self.spec)

    def _evaluate(self, weights: Any) -> ray.ObjectRef:
        c = self.config.eval
        return self.evaluator.evaluate.remote(weights, c.episodes, c.epsilon)

    def _collect_eval(self, ref: ray.ObjectRef) -> bool:
        """Record a finished evaluation; a lost evaluator is recreated and the evaluation
        skipped, never the run."""
        try:
            results = ray.get(ref)[0]
        except ray.exceptions.RayActorError as err:
            self.reporter.print(f"evaluator lost ({type(err).__name__}); recreating it")
            ray.kill(self.evaluator, no_restart=True)
            self._start_evaluator()
            return False
        self._record_eval(results)
        return True

    def _start_actor(self, index: int, generation: int = 0) -> None:
        c = self.config
        seed = c.env.seed + 1000 * index + 7919 * generation + 1
        opts: dict[str, Any] = {"num_cpus": c.actors.num_cpus, "scheduling_strategy": "SPREAD"}
        if c.actors.resources:
            opts["resources"] = dict(c.actors.resources)
        actor = RemoteActor.options(**opts).remote(self._cfg, self.spec, index, seed,
                                                    self.learner)
        self.actors[index] = actor
        self.runs[actor.run.remote()] = index
        self._chunks_at_start[index] = self._chunks_by_actor.get(index, 0)

    def _grow(self) -> None:
        """An `auto` fleet takes the CPUs of nodes that joined: one more actor per check,
        and only once every actor started so far is streaming."""
        a = self.config.actors
        if not self._auto or len(self.actors) >= (a.max_actors or 0):
            return
        pending = [i for i, n in self._chunks_at_start.items()
                   if self._chunks_by_actor.get(i, 0) <= n]
        if pending:
            return
        free = ray.available_resources()
        if free.get("CPU", 0.0) >= a.num_cpus and all(
                free.get(k, 0.0) >= v for k, v in a.resources.items()):
            index = max(self.actors) + 1
            self.reporter.print(f"a node with free CPUs joined: starting actor {index}")
            self._start_actor(index)

    def _check_actors(self) -> None:
        """Recreate any actor whose loop ended with an error (process killed, env raised)."""
        if not self.runs:
            return
        done, _ = ray.wait(list(self.runs), num_returns=len(self.runs), timeout=0)
        for ref in done:
            index = self.runs.pop(ref)
            try:
                ray.get(ref)
                continue  # a clean return: the learner told it to stop
            except Exception as err:  # any actor failure is restarted
                cause = getattr(err, "cause", None)
                reason = type(cause or err).__name__
            if self._stop_requested:
                continue
            self.state.actor_restarts += 1
            self.reporter.print(f"actor {index} died ({reason}); restarting it "
                                f"(restart #{self.state.actor_restarts})")
            ray.kill(self.actors[index], no_restart=True)
            self._start_actor(index, self.state.actor_restarts)

    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c, s = self.config, self.state
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(c, self.run_dir / "config.yaml")
        self._auto = c.actors.num_actors == "auto"
        self.config = c = resolve_fleet(c)
        self._cfg = c.to_dict()
        check_placeable(c)
        self._start()
        self.reporter.print(
            f"qfleet: {c.env.id} | learner on {self.learner_device} | "
            f"{c.actors.num_actors} actors x {c.actors.envs_per_actor} envs | "
            f"run dir {self.run_dir}")
        train_start = time.monotonic()
        last = (train_start, s.env_steps, s.updates)
        last_eval_launch = train_start
        next_ckpt = s.updates + c.log.checkpoint_every_updates
        eval_ref: ray.ObjectRef | None = None
        weights_ref = None
        previous = signal.signal(signal.SIGTERM, self.request_stop)
        try:
            while not self._stop_requested:
                time.sleep(TICK_S)
                stats = ray.get(self.learner.stats.options(enable_task_events=False).remote())
                self._absorb(stats)
                weights_ref = stats["weights"][0]
                now = time.monotonic()
                dt = max(now - last[0], 1e-9)
                rates = {"env_steps_per_s": (s.env_steps - last[1]) / dt,
                         "updates_per_s": (s.updates - last[2]) / dt}
                if now - last[0] >= 1.0:
                    self.reporter.scalars(stats, rates, s.env_steps)
                    w = self.reporter.writer
                    w.add_scalar("fleet/actor_restarts", s.actor_restarts, s.env_steps)
                    w.add_scalar("fleet/actors", len(self.runs), s.env_steps)
                    w.add_scalar("fleet/nonfinite_skipped", stats["nonfinite_skipped"],
                                 s.env_steps)
                    self.reporter.status(now - self.command_start, stats, rates, s.eval_mean)
                    last = (now, s.env_steps, s.updates)
                self._check_actors()
                if now - self._last_grow >= 2.0:
                    self._grow()
                    self._last_grow = now
                if eval_ref is not None and ray.wait([eval_ref], timeout=0)[0]:
                    self._collect_eval(eval_ref)
                    eval_ref = None
                if (eval_ref is None and s.updates > 0
                        and now - last_eval_launch >= c.eval.every_s):
                    eval_ref = self._evaluate(weights_ref)
                    last_eval_launch = now
                if s.updates >= next_ckpt:
                    with_replay = c.replay.save_with_checkpoints and self._replay_fits()
                    state = ray.get(self.learner.state.remote(include_replay=with_replay))
                    replay = state.pop("replay", None)
                    self._checkpoint(state)
                    if replay is not None:
                        save_replay(self.run_dir, int(state["counters"]["updates"]), replay)
                    next_ckpt = s.updates + c.log.checkpoint_every_updates
                    self._sync()
                if now - self._last_sync >= 60.0:
                    self._sync()
                if self._should_stop(now - train_start):
                    break
            if self._stop_requested and not s.stopped_by:
                s.stopped_by = "interrupted"
        except KeyboardInterrupt:
            s.stopped_by = "interrupted"
            # A second Ctrl-C during the shutdown below exits at once.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return self._finish(train_start, eval_ref, weights_ref)

    def _absorb(self, stats: dict[str, Any]) -> None:
        s = self.state
        s.env_steps, s.updates = stats["env_steps"], stats["updates"]
        s.nodes.update(stats["actor_nodes"])
        if stats["nonfinite_skipped"] > self._nonfinite_seen:
            self.reporter.print(
                f"warning: {stats['nonfinite_skipped'] - self._nonfinite_seen} update(s) "
                f"skipped for a NaN/inf loss ({stats['nonfinite_skipped']} in all)")
            self._nonfinite_seen = stats["nonfinite_skipped"]
        if stats["nonfinite_streak"] >= self.config.learner.max_nonfinite:
            self.reporter.print(f"error: {stats['nonfinite_streak']} NaN/inf losses in a row; "
                                "stopping with a checkpoint of the last good weights")
            s.stopped_by = "nonfinite_loss"
        self._chunks_by_actor = stats["chunks_by_actor"]
        episodes = [Episode(*e) for e in stats["episode_list"]]
        self.reporter.episodes(episodes, s.episodes + 1, s.env_steps)
        s.episodes += len(episodes)

    def _record_eval(self, results: list[tuple[float, int, bool]]) -> None:
        s, c = self.state, self.config
        returns = [r[0] for r in results]
        s.eval_mean = statistics.fmean(returns)
        s.eval_std = statistics.pstdev(returns)
        elapsed = time.monotonic() - self.command_start
        self.reporter.evaluation(returns, s.env_steps, elapsed)
        target = c.stop.target_return
        if target is not None and s.eval_mean >= target and s.time_to_target is None:
            s.time_to_target = elapsed
            s.stopped_by = "target_return"

    def _replay_fits(self) -> bool:
        """Whether the disk has room for the replay (twice, to be safe)."""
        if self.config.replay.kind == "none":
            return False
        need = ray.get(self.learner.replay_bytes.remote())
        free = shutil.disk_usage(self.run_dir).free
        if need * 2 > free:
            self.reporter.print(f"replay not saved: {need / 2**30:.1f} GiB needed, "
                                f"{free / 2**30:.1f} GiB free on disk")
            return False
        return True

    def _save_replay(self, updates: int) -> None:
        """Keep the replay for --resume (after the final checkpoint)."""
        if not self.config.replay.save_on_exit or not self._replay_fits():
            return
        replay = ray.get(self.learner.replay_state.remote())
        if replay is not None:
            path = save_replay(self.run_dir, updates, replay)
            self.reporter.print(f"replay saved: {path} ({replay['size']:,} transitions)")

    def _sync(self) -> None:
        """Mirror the run directory to its storage URI, if it has one."""
        self._last_sync = time.monotonic()
        if self.storage is not None and self.storage.uri is not None:
            self.reporter.writer.flush()
            try:
                self.storage.sync()
            except OSError as err:  # keep training; the next sync retries
                self.reporter.print(f"warning: upload to {self.storage.uri} failed: {err}")

    def _should_stop(self, elapsed: float) -> bool:
        s, stop = self.state, self.config.stop
        if s.stopped_by in ("target_return", "nonfinite_loss"):
            return True
        if stop.env_steps is not None and s.env_steps >= stop.env_steps:
            s.stopped_by = "env_steps"
        elif stop.time_s is not None and elapsed >= stop.time_s:
            s.stopped_by = "time_s"
        return bool(s.stopped_by)

    def _checkpoint(self, state: dict[str, Any]) -> Path:
        state = {**state, "config": self._cfg,
                 "spec": {"obs_shape": list(self.spec.obs_shape),
                          "obs_dtype": str(self.spec.obs_dtype),
                          "num_actions": self.spec.num_actions}}
        return save_checkpoint(self.run_dir, state, self.config.log.keep_checkpoints)

    def _finish(self, train_start: float, eval_ref: ray.ObjectRef | None,
                weights_ref: Any) -> dict[str, Any]:
        s, c = self.state, self.config
        final = ray.get(self.learner.stop.remote())
        path = self._checkpoint(final)
        self._save_replay(int(final["counters"]["updates"]))
        s.updates = int(final["counters"]["updates"])
        s.env_steps = int(final["counters"]["env_steps"])
        self.reporter.print(f"checkpoint written: {path}")
        if s.stopped_by not in ("interrupted", "target_return", "nonfinite_loss"):
            # The summary reports a greedy evaluation of the final weights.
            if eval_ref is not None:
                ray.cancel(eval_ref, force=True)
            final_weights = ray.put(final["network"])
            for _ in range(2):  # once more on a fresh evaluator if the first was lost
                if self._collect_eval(self._evaluate(final_weights)):
                    break
        wall = time.monotonic() - self.command_start
        summary = {
            "env_id": c.env.id,
            "env_steps": s.env_steps,
            "updates": s.updates,
            "episodes": s.episodes,
            "wall_time_s": round(wall, 3),
            "train_time_s": round(time.monotonic() - train_start, 3),
            "eval_return_mean": s.eval_mean,
            "eval_return_std": s.eval_std,
            "target_return": c.stop.target_return,
            "time_to_target_s": None if s.time_to_target is None else round(s.time_to_target, 3),
            "stopped_by": s.stopped_by,
            "actor_restarts": s.actor_restarts,
            "actor_nodes": len(s.nodes),
            "actor_node_ids": sorted(s.nodes),
            "learner_node_id": self.learner_node,
            "num_actors": len(self.actors),
            "learner_device": self.learner_device,
            "checkpoint": str(path),
            "run_uri": self.storage.uri if self.storage is not None else None,
            "replay_restored": int(saved["size"]) if (saved := (self.resume or {})
                                                      .get("replay")) else 0,
        }
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, self.run_dir / "summary.json")
        self.reporter.status(wall, {"env_steps": s.env_steps, "updates": s.updates},
                             {"env_steps_per_s": s.env_steps / max(wall, 1e-9),
                              "updates_per_s": s.updates / max(wall, 1e-9)},
                             s.eval_mean, force=True)
        self.reporter.close()
        self._sync()
        return summary
