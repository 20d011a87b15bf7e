"""`qfleet bench chaos`: real CartPole runs during which parts of the fleet are killed at
random moments (a bounded number, inside the first 60 % of each run).

Two kinds of chaos:
- processes (`--nodes 0`, the default): the run's own actor and learner processes are
  SIGKILLed inside its embedded Ray;
- nodes (`--nodes K`): the run joins a multi-node Ray on this machine (Ray's own
  `ray.cluster_utils.Cluster`: a head and K worker nodes, each able to host the learner)
  and whole worker nodes are killed (every process of the node at once, as a machine
  failure); sometimes the learner's. A replacement node joins `--replace-s` later, as an
  autoscaler would bring one.

Per kill it reports when the run noticed (its console line), when training resumed (a
learner kill: the restarted learner is up), the training seconds it cost (until the
learner's update count is back where it was), the updates rolled back to the newest
checkpoint (at least: counted from the last report before the kill), and the chunks
dropped; per run, whether the fleet's env steps stayed monotone, whether the run ended
cleanly, and whether a greedy evaluation after the last kill still reached the target.
Nothing but the work since the newest checkpoint and the chunks in flight may be lost:
`within_checkpoint` says whether every learner kill rolled back at most
`log.checkpoint_every_updates` (plus the one report interval the count is read at)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

from qfleet.bench.common import run_processes, scalars, start_training

TARGET = 475.0
NODE_CPUS = 2
"""Each worker node's CPUs: the learner's one and an actor's, or two actors."""


def schedule(seconds: float, kills: int, learner_kills: int, seed: int,
             first_s: float = 8.0) -> list[tuple[float, str]]:
    """(seconds after the start, "learner" | "actor") for each kill: spread over the first
    60 % of the run, at least 5 s apart, in a random order of victims."""
    rng = random.Random(seed)
    victims = ["learner"] * learner_kills + ["actor"] * (kills - learner_kills)
    rng.shuffle(victims)
    span = max(0.6 * seconds - first_s, 5.0 * kills)
    slot = span / max(kills, 1)
    return [(first_s + i * slot + rng.uniform(0.0, max(slot - 5.0, 0.0)), victim)
            for i, victim in enumerate(victims)]


class ProcessKiller:
    """Kills one process of the run's embedded Ray in the victim's role."""

    kind = "process"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed + 1)
        self.env: dict[str, str] | None = None  # the run starts its own Ray
        self.driver_pid = 0

    def kill(self, victim: str) -> str | None:
        pids = run_processes(self.driver_pid, victim)
        if not pids:  # between a death and its restart: try again shortly
            time.sleep(2.0)
            pids = run_processes(self.driver_pid, victim)
        if not pids:
            return None
        pid = self.rng.choice(pids)
        os.kill(pid, signal.SIGKILL)
        return f"pid {pid}"

    def close(self) -> None:
        pass


class NodeKiller:
    """A head and `nodes` worker nodes of Ray's test cluster; kills whole worker nodes and
    brings a fresh one `replace_s` later (a thread, so kills and joins overlap as on a
    cluster with an autoscaler)."""

    kind = "node"

    def __init__(self, nodes: int, replace_s: float, seed: int) -> None:
        from ray.cluster_utils import Cluster

        self.rng = random.Random(seed + 1)
        self.replace_s = replace_s
        # The head hosts the driver only; every worker node may host the learner.
        # Stopped by `close` (Ray's own exit hooks trip over nodes removed before).
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0},
                               shutdown_at_exit=False)
        self._joins: list[threading.Thread] = []
        for _ in range(nodes):
            self._add()
        self.env = {**os.environ, "RAY_ADDRESS": self.cluster.address}
        self.driver_pid = 0

    def _add(self) -> None:
        self.cluster.add_node(num_cpus=NODE_CPUS,
                              resources={"qfleet_learner": 1, "qfleet_actor": NODE_CPUS})

    def kill(self, victim: str) -> str | None:
        # A learner restarting after an earlier kill has no node yet: wait for it, so that
        # an actor-node kill never hits it by chance and a learner-node kill finds it.
        deadline = time.monotonic() + 60.0
        while (learner := _learner_node(self.cluster)) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = list(self.cluster.worker_nodes)
        others = [n for n in workers if n is not learner]
        choice = learner if victim == "learner" else (self.rng.choice(others) if others
                                                       else None)
        if choice is None:
            return None
        self.cluster.remove_node(choice, allow_graceful=False)
        join = threading.Thread(target=self._replace, daemon=True)
        join.start()
        self._joins.append(join)
        return f"node {choice.node_id[:8]}"

    def _replace(self) -> None:
        time.sleep(self.replace_s)
        with contextlib.suppress(Exception):  # the bench ended meanwhile
            self._add()

    def close(self) -> None:
        for join in self._joins:
            join.join(timeout=self.replace_s + 60)
        self.cluster.shutdown()


def _learner_node(cluster: Any) -> Any:
    """The worker node whose raylet is the parent of the learner's process (None: the
    learner is between a death and its restart)."""
    import psutil

    raylets = {node.all_processes["raylet"][0].process.pid: node
               for node in cluster.worker_nodes}
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::LearnerWorker") and proc.info["ppid"] in raylets:
            return raylets[proc.info["ppid"]]
    return None


@contextlib.contextmanager
def _killer(nodes: int, replace_s: float, seed: int) -> Iterator[ProcessKiller | NodeKiller]:
    killer = NodeKiller(nodes, replace_s, seed) if nodes else ProcessKiller(seed)
    try:
        yield killer
    finally:
        killer.close()


def run(seconds: float, kills: int = 4, learner_kills: int | None = None, seed: int = 0,
        seeds: int = 1, checkpoint_every: int = 500, nodes: int = 0, replace_s: float = 10.0,
        config: str = "configs/cartpole.yaml") -> dict[str, Any]:
    """`seeds` runs (kill schedules `seed`, `seed + 1`, ...), one after another."""
    learner_kills = min((kills + 1) // 2 if learner_kills is None else learner_kills, kills)
    runs = [one_run(seconds, kills, learner_kills, s, checkpoint_every, nodes, replace_s,
                    config) for s in range(seed, seed + seeds)]
    lost = [s for r in runs for s in r["training_s_lost_per_learner_kill"] if s is not None]
    return {
        "bench": "chaos", "seconds": seconds, "config": config, "nodes": nodes,
        "kills_per_run": kills, "learner_kills_per_run": learner_kills, "seeds": seeds,
        "checkpoint_every_updates": checkpoint_every, "runs": runs,
        "all_survived": all(r["kills_survived"] == len(r["kills"]) == kills and
                            r["exit_code"] == 0 for r in runs),
        "all_monotone": all(r["env_steps_monotone"] for r in runs),
        "all_within_checkpoint": all(r["within_checkpoint"] for r in runs),
        "all_reached_target": all(r["reached_target"] for r in runs),
        "median_training_s_lost": round(statistics.median(lost), 1) if lost else None,
    }


def one_run(seconds: float, kills: int, learner_kills: int, seed: int,
            checkpoint_every: int, nodes: int, replace_s: float, config: str
            ) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="qfleet-chaos-"))
    plan = schedule(seconds, kills, learner_kills, seed)
    args = [config, "stop.target_return=null", f"stop.time_s={seconds}",
            f"log.checkpoint_every_updates={checkpoint_every}",
            f"learner.max_restarts={kills}"]
    if nodes:  # the learner on a worker node; actors on the others' free CPUs
        args += ['learner.resources={"qfleet_learner": 1}', f"actors.num_actors={nodes}"]
    lines: list[tuple[float, str]] = []
    done: list[dict[str, Any]] = []
    with _killer(nodes, replace_s, seed) as killer:
        proc = start_training(args, run_dir, env=killer.env)
        killer.driver_pid = proc.pid
        reader = threading.Thread(target=lambda: lines.extend(
            (time.time(), line) for line in proc.stdout or []), daemon=True)
        reader.start()
        start = time.monotonic()
        for at, victim in plan:
            time.sleep(max(at - (time.monotonic() - start), 0.0))
            if proc.poll() is not None:
                break
            if (what := killer.kill(victim)) is not None:
                done.append({"victim": victim, "what": what, "at_s": round(at, 1),
                             "wall_time": time.time()})
        proc.wait()
        reader.join(timeout=10)
    return _analyse(run_dir, proc.returncode, done, lines, checkpoint_every) | {
        "seed": seed, "kind": killer.kind}


def _analyse(run_dir: Path, exit_code: int, done: list[dict[str, Any]],
             lines: list[tuple[float, str]], checkpoint_every: int) -> dict[str, Any]:
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    updates = sorted(scalars(run_dir, "learner/updates"), key=lambda e: e.wall_time)
    dropped = sorted(scalars(run_dir, "fleet/chunks_dropped"), key=lambda e: e.wall_time)
    # Where each learner restart began: its checkpoint's update count (0: fresh weights).
    restored = [(t, int(m.group(1) or 0)) for t, line in lines
                if (m := re.search(r"restarting it from (?:checkpoint ckpt-(\d+)|fresh)", line))]
    # Each kill's window lasts until the next one (none at all: the run ended first).
    ends = ([k["wall_time"] for k in done[1:]] + [float("inf")]) if done else []
    for kill, until in zip(done, ends, strict=True):
        t = kill["wall_time"]
        said = "learner lost" if kill["victim"] == "learner" else " died ("
        lost_lines = [w for w, line in lines if w >= t and said in line]
        kill["noticed_s"] = round(lost_lines[0] - t, 1) if lost_lines else None
        kill["resumed_s"] = kill["training_s_lost"] = kill["updates_rolled_back"] = None
        before = [e.value for e in dropped if e.wall_time < t]
        during = [e.value for e in dropped if t <= e.wall_time < until]
        kill["chunks_dropped"] = int(max(during, default=0) - max(before, default=0)) \
            if during else 0
        if kill["victim"] != "learner":
            continue
        back = [w for w, line in lines if w >= t and "learner back on" in line]
        kill["resumed_s"] = round(back[0] - t, 1) if back else None
        peak = max((e.value for e in updates if e.wall_time < t), default=None)
        if peak is None:
            continue
        # Counted from the restarted learner's first report: a report of the old learner
        # can still arrive just after the kill.
        since = back[0] if back else t
        again = next((e.wall_time for e in updates if e.wall_time >= since and
                      e.value >= peak), None)
        kill["training_s_lost"] = None if again is None else round(again - t, 1)
        start = next((u for w, u in restored if w >= t), None)
        if start is not None:
            kill["updates_rolled_back"] = max(int(peak) - start, 0)
    steps = [e.step for e in updates]
    learner_kills = [k for k in done if k["victim"] == "learner"]
    lost_s = [k["training_s_lost"] for k in learner_kills]
    last_kill = max((k["wall_time"] for k in done), default=0.0)
    after = [e.value for e in scalars(run_dir, "eval/return_mean") if e.wall_time > last_kill]
    best_after = max(after, default=None)
    # The count is read once a second: a kill can land up to that many updates past it.
    rate = max((b.value - a.value) / max(b.wall_time - a.wall_time, 1e-9)
               for a, b in pairwise(updates)) if len(updates) > 1 else 0.0
    slack = checkpoint_every + int(rate * 1.5)
    return {
        "kills": done, "learner_kills": len(learner_kills),
        "actor_kills": len(done) - len(learner_kills),
        "exit_code": exit_code, "stopped_by": summary.get("stopped_by"),
        "learner_restarts": summary.get("learner_restarts"),
        "actor_restarts": summary.get("actor_restarts"),
        "chunks_dropped": summary.get("chunks_dropped"),
        "kills_survived": len(done) if exit_code == 0 and
        summary.get("learner_restarts", -1) >= len(learner_kills) else 0,
        "training_s_lost_per_learner_kill": lost_s,
        "updates_rolled_back_per_learner_kill": [k["updates_rolled_back"]
                                                 for k in learner_kills],
        "within_checkpoint": all(k["updates_rolled_back"] is not None and
                                 k["updates_rolled_back"] <= slack for k in learner_kills),
        "env_steps_monotone": bool(steps) and all(a <= b for a, b in pairwise(steps)),
        "final_eval_return": summary.get("eval_return_mean"), "target_return": TARGET,
        "best_eval_return_after_last_kill": best_after,
        "reached_target": best_after is not None and best_after >= TARGET,
        "run_dir": str(run_dir), "last_lines": [line for _, line in lines[-5:]],
    }


def describe(result: dict[str, Any]) -> list[str]:
    what = (f"{result['nodes']} worker nodes, whole nodes killed" if result["nodes"]
            else "processes killed")
    out = [f"chaos: {len(result['runs'])} run(s) of {result['seconds']:.0f} s of "
           f"{result['config']}, {what}; {result['kills_per_run']} kills a run "
           f"({result['learner_kills_per_run']} of the learner"
           f"{'’s node' if result['nodes'] else ''})"]
    for r in result["runs"]:
        out.append(f"seed {r['seed']}: survived {r['kills_survived']} of {len(r['kills'])} "
                   f"kills (exit {r['exit_code']}, stopped by {r['stopped_by']}; learner "
                   f"restarts {r['learner_restarts']}, actor restarts {r['actor_restarts']}, "
                   f"chunks dropped {r['chunks_dropped']}); env steps monotone "
                   f"{r['env_steps_monotone']}; best greedy return after the last kill "
                   f"{r['best_eval_return_after_last_kill']} ("
                   f"{'reached' if r['reached_target'] else 'not reached'})")
        for k in r["kills"]:
            line = (f"  {k['victim']:7s} @{k['at_s']:5.0f}s ({k['what']}): noticed after "
                    f"{k['noticed_s']} s")
            if k["victim"] == "learner":
                line += (f", learner back after {k['resumed_s']} s, training lost "
                         f"{k['training_s_lost']} s, {k['updates_rolled_back']} updates "
                         "rolled back")
            out.append(line + f", {k['chunks_dropped']} chunks dropped")
    out.append(f"all kills survived: {result['all_survived']}; env steps monotone: "
               f"{result['all_monotone']}; nothing lost beyond the newest checkpoint: "
               f"{result['all_within_checkpoint']} (checkpoint every "
               f"{result['checkpoint_every_updates']} updates); target reached after the "
               f"last kill: {result['all_reached_target']}; median training seconds lost "
               f"per learner kill: {result['median_training_s_lost']}")
    return out


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    runs = result["runs"]
    kills = sum(len(r["kills"]) for r in runs)
    survived = sum(r["kills_survived"] for r in runs)
    what = "whole-node kills" if result["nodes"] else "process kills"
    return [(f"Chaos: {what}, {len(runs)} CartPole runs",
             f"{survived} of {kills} survived; median {result['median_training_s_lost']} s of "
             f"training lost per learner{'-node' if result['nodes'] else ''} kill; target "
             f"reached after the last kill: {result['all_reached_target']}")]
