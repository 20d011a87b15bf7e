"""`qfleet bench chaos`: a real CartPole run during which the run's own actors and learner
are SIGKILLed at random moments (a bounded number, inside the first 60 % of the run).

It reports the kills the run survived, the training seconds each learner kill cost (from
the kill until the learner's update count is back where it was), the updates each kill
rolled back to the newest checkpoint (at least: counted from the last report before the
kill), whether the fleet's counters stayed monotone, and whether a greedy evaluation after
the last kill still reaches the target return."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from qfleet.bench.common import run_processes, scalars, start_training

TARGET = 475.0


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


def run(seconds: float, kills: int = 4, learner_kills: int | None = None, seed: int = 0,
        checkpoint_every: int = 500, config: str = "configs/cartpole.yaml") -> dict[str, Any]:
    learner_kills = min((kills + 1) // 2 if learner_kills is None else learner_kills, kills)
    run_dir = Path(tempfile.mkdtemp(prefix="qfleet-chaos-"))
    plan = schedule(seconds, kills, learner_kills, seed)
    rng = random.Random(seed + 1)
    proc = start_training([config, "stop.target_return=null", f"stop.time_s={seconds}",
                           f"log.checkpoint_every_updates={checkpoint_every}",
                           f"learner.max_restarts={max(learner_kills, 1)}"], run_dir)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    start = time.monotonic()
    done: list[dict[str, Any]] = []
    for at, victim in plan:
        time.sleep(max(at - (time.monotonic() - start), 0.0))
        if proc.poll() is not None:
            break
        pids = run_processes(proc.pid, victim)
        if not pids:  # between a death and its restart: try again shortly
            time.sleep(2.0)
            pids = run_processes(proc.pid, victim)
        if pids:
            pid = rng.choice(pids)
            os.kill(pid, signal.SIGKILL)
            done.append({"victim": victim, "pid": pid, "at_s": round(at, 1),
                         "wall_time": time.time()})
    proc.wait()
    reader.join(timeout=10)
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    updates = sorted(scalars(run_dir, "learner/updates"), key=lambda e: e.wall_time)
    # Where each restart began: the update count of its checkpoint (0: fresh weights).
    restored = [int(m.group(1) or 0) for line in lines
                if (m := re.search(r"restarting it from (?:checkpoint ckpt-(\d+)|fresh)", line))]
    lost_s, rolled_back = [], []
    for i, kill in enumerate(k for k in done if k["victim"] == "learner"):
        before = [e.value for e in updates if e.wall_time < kill["wall_time"]]
        after = [e for e in updates if e.wall_time >= kill["wall_time"]]
        if not before or not after:
            continue
        peak = max(before)  # the last report before the kill: a lower bound of its count
        back = next((e.wall_time for e in after if e.value >= peak), None)
        lost_s.append(None if back is None else round(back - kill["wall_time"], 1))
        if i < len(restored):
            rolled_back.append(max(int(peak) - restored[i], 0))
    steps = [e.step for e in updates]
    learner_done = sum(k["victim"] == "learner" for k in done)
    actor_done = len(done) - learner_done
    final = summary.get("eval_return_mean")
    last_kill = max((k["wall_time"] for k in done), default=0.0)
    after = [e.value for e in scalars(run_dir, "eval/return_mean") if e.wall_time > last_kill]
    best_after = max(after, default=None)
    return {
        "bench": "chaos", "seconds": seconds, "config": config, "seed": seed,
        "kills": done, "learner_kills": learner_done, "actor_kills": actor_done,
        "exit_code": proc.returncode, "stopped_by": summary.get("stopped_by"),
        "learner_restarts": summary.get("learner_restarts"),
        "actor_restarts": summary.get("actor_restarts"),
        "chunks_dropped": summary.get("chunks_dropped"),
        "kills_survived": len(done) if proc.returncode == 0 and
        summary.get("learner_restarts", -1) >= learner_done and
        summary.get("actor_restarts", -1) >= actor_done else 0,
        "training_s_lost_per_learner_kill": lost_s,
        "median_training_s_lost": (round(statistics.median([s for s in lost_s if s is not None]), 1)
                                   if any(s is not None for s in lost_s) else None),
        "updates_rolled_back_per_learner_kill": rolled_back,
        "env_steps_monotone": bool(steps) and all(a <= b for a, b in pairwise(steps)),
        "final_eval_return": final, "target_return": TARGET,
        "best_eval_return_after_last_kill": best_after,
        "reached_target": best_after is not None and best_after >= TARGET,
        "run_dir": str(run_dir), "last_lines": lines[-5:],
    }


def describe(result: dict[str, Any]) -> list[str]:
    kills = ", ".join(f"{k['victim']}@{k['at_s']:.0f}s" for k in result["kills"]) or "none"
    lost = result["training_s_lost_per_learner_kill"]
    return [f"chaos: {result['seconds']:.0f} s of {result['config']}; kills: {kills}",
            f"survived {result['kills_survived']} of {len(result['kills'])} kills "
            f"(exit {result['exit_code']}, stopped by {result['stopped_by']}; learner "
            f"restarts {result['learner_restarts']}, actor restarts "
            f"{result['actor_restarts']}, chunks dropped {result['chunks_dropped']})",
            f"training seconds lost per learner kill: {lost} (median "
            f"{result['median_training_s_lost']}); updates rolled back (at least): "
            f"{result['updates_rolled_back_per_learner_kill']}",
            f"env steps monotone: {result['env_steps_monotone']}; best greedy return after "
            f"the last kill {result['best_eval_return_after_last_kill']} (target "
            f"{result['target_return']:g}: "
            f"{'reached' if result['reached_target'] else 'not reached'}); final weights "
            f"{result['final_eval_return']}"]
