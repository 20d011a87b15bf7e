"""`qfleet bench recovery`: seconds from SIGKILL of one actor's process to recovered fleet
throughput (CartPole, actors unthrottled so throughput is the actors'), read from the
run's TensorBoard."""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import threading
import time
from typing import Any

from qfleet.bench.common import run_processes, scalars, start_training


def run(seconds: float, kill_after_s: float = 20.0) -> dict[str, Any]:
    run_dir = tempfile.mkdtemp(prefix="qfleet-recovery-")
    total = max(seconds, kill_after_s + 20.0)
    proc = start_training(["configs/cartpole.yaml", "stop.target_return=null",
                           f"stop.time_s={total}", "learner.replay_ratio=null"], run_dir)
    # Drain its output meanwhile: a full pipe would stall the run being measured.
    reader = threading.Thread(target=lambda: proc.stdout and proc.stdout.read(), daemon=True)
    reader.start()
    time.sleep(kill_after_s)
    pids = run_processes(proc.pid, "actor")  # this run's own actors only
    t_kill = time.time()
    if pids:
        os.kill(pids[0], signal.SIGKILL)
    proc.wait()
    reader.join(timeout=10)
    rates = scalars(run_dir, "charts/SPS")
    before = [e.value for e in rates if t_kill - 10 <= e.wall_time < t_kill]
    base = statistics.fmean(before) if before else float("nan")
    after = [(e.wall_time - t_kill, e.value) for e in rates if e.wall_time >= t_kill]
    recovered = next((dt for dt, v in after if v >= 0.9 * base), None)
    return {"bench": "recovery", "killed_pid": pids[0] if pids else None,
            "baseline_env_steps_per_s": base,
            "min_env_steps_per_s_after_kill": min((v for _, v in after[:10]), default=None),
            "recovered_90pct_after_s": recovered, "run_dir": run_dir,
            "exit_code": proc.returncode}


def describe(result: dict[str, Any]) -> list[str]:
    if result["killed_pid"] is None:
        return ["no actor process of the run was found to kill (the benchmark starts its own "
                "local Ray: unset RAY_ADDRESS)"]
    back = result["recovered_90pct_after_s"]
    return [f"one actor SIGKILLed: throughput {result['baseline_env_steps_per_s']:,.0f} -> "
            f"{result['min_env_steps_per_s_after_kill'] or 0:,.0f} env steps/s; back to 90 % "
            + ("never" if back is None else f"after {back:.1f} s")]
