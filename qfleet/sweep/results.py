"""What a sweep leaves: its trials ranked by greedy return, `trials.csv`, `best.yaml` (the
best trial's whole config, ready for `qfleet train`), and the table the command prints."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfleet.config import save_config
from qfleet.runs.record import StopReason
from qfleet.sweep.space import Sweep, trial_config
from qfleet.sweep.trial import METRIC

_FAILED = {r.value for r in StopReason if r.exit_code != 0}


@dataclass(frozen=True)
class TrialRow:
    trial: str
    ended: str
    """`target_return`, `time_s`, ... as the trial's summary says; `sweep` (stopped early
    by the scheduler), `error: ...`, or `unfinished` (an interrupted sweep)."""
    eval_return_mean: float | None
    eval_return_sem: float | None
    env_steps: int
    updates: int
    time_s: float
    run_dir: str
    params: dict[str, Any]

    @property
    def failed(self) -> bool:
        """It raised, or its fleet failed (a lost learner past its restarts, NaN losses...):
        its config is never the best."""
        return self.ended.startswith("error") or self.ended in _FAILED

    @property
    def scored(self) -> bool:
        return (self.eval_return_mean is not None and math.isfinite(self.eval_return_mean)
                and not self.failed)


def rank(results: Any) -> list[TrialRow]:
    """Ray Tune's `ResultGrid` as rows, `ordered`."""
    rows = []
    for result in results:
        m = result.metrics or {}
        mean = m.get(METRIC)
        if result.error is not None:
            ended = f"error: {str(result.error).strip().splitlines()[-1][:120]}"
        elif m.get("done"):
            ended = m.get("stopped_by") or "sweep"
        else:
            ended = "unfinished"
        rows.append(TrialRow(
            trial=m.get("trial_id") or Path(result.path).name, ended=ended,
            eval_return_mean=None if mean is None or not math.isfinite(mean) else float(mean),
            eval_return_sem=m.get("eval_return_sem"), env_steps=int(m.get("env_steps", 0)),
            updates=int(m.get("updates", 0)), time_s=float(m.get("time_total_s", 0.0)),
            run_dir=str(m.get("run_dir", "")), params=dict(result.config or {})))
    return ordered(rows)


def ordered(rows: list[TrialRow]) -> list[TrialRow]:
    """Best first: the higher last greedy return; equal returns (trials that all reached
    stop.target_return), fewer env steps; failed and unscored trials last."""
    return sorted(rows, key=lambda r: (not r.scored, -(r.eval_return_mean or 0.0),
                                       r.env_steps, r.trial))


def write_trials_csv(rows: list[TrialRow], sweep: Sweep, path: Path) -> None:
    keys = [s.key for s in sweep.searched]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["rank", "trial", "eval_return_mean", "eval_return_sem", "env_steps",
                      "updates", "time_s", "ended", *keys, "run_dir"])
        for i, r in enumerate(rows, 1):
            out.writerow([i, r.trial, r.eval_return_mean, r.eval_return_sem, r.env_steps,
                          r.updates, round(r.time_s, 1), r.ended,
                          *(r.params.get(k) for k in keys), r.run_dir])


def write_best(rows: list[TrialRow], base: dict[str, Any], path: Path) -> TrialRow | None:
    """`best.yaml`: the best scored trial's resolved config (None when no trial scored)."""
    best = next((r for r in rows if r.scored), None)
    if best is not None:
        save_config(trial_config(base, best.params), path)
    return best


def table(rows: list[dict[str, Any]], keys: list[str], title: str) -> Any:
    """The ranked trials (`TrialRow`s as dicts) as a rich table, a column per swept key."""
    from rich.table import Table

    out = Table(title=title)
    for col in ("rank", "trial", "greedy return", "env steps", "time", "ended"):
        out.add_column(col, justify="left" if col in ("trial", "ended") else "right")
    for key in keys:
        out.add_column(key, justify="right")
    for i, r in enumerate(rows, 1):
        mean, sem = r["eval_return_mean"], r["eval_return_sem"]
        score = "-" if mean is None else f"{mean:.1f}"
        if mean is not None and sem is not None:
            score += f" ± {sem:.1f}"
        out.add_row(str(i), r["trial"], score, f"{r['env_steps']:,}", f"{r['time_s']:.0f} s",
                    r["ended"], *(_fmt(r["params"].get(k)) for k in keys))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
