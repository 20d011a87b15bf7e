"""Learning per wall-clock second: greedy evaluations along a fixed budget, start-up
included, for qfleet and (optionally) Stable-Baselines3's zoo DQN on the same machine.

Each seed runs qfleet and SB3 one after the other, alternating who goes first, so that
machine noise hits both; medians over seeds. A curve holds the evaluations finished within
the budget, counted from the command's launch. With a target return, each run stops there
and the figure is the time to reach it; without one, the curve and its last point.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qfleet.atari_scores import SCORES
from qfleet.bench.common import scalars
from qfleet.config import ConfigError, load_config
from qfleet.envs import ale_game, is_atari
from qfleet.presets import preset


def default_config(env_id: str) -> Path:
    """The shipped config for this kind of env: CartPole's, or the laptop Atari one."""
    name = ("cartpole.yaml" if env_id == "CartPole-v1" else
            "spaceinvaders-cpu.yaml" if is_atari(env_id) else None)
    if name is None:
        raise ConfigError(f"--config: no shipped config for {env_id!r}; give one")
    return preset(name)


def run(seconds: float, env_id: str, config: str | None = None,
        against: str | None = None, seeds: int = 1, first_seed: int = 0,
        target: float | None = None,
        points: int = 8, episodes: int = 16, overrides: list[str] | None = None,
        plot: str | None = None, beside: bool = False,
        versus: list[str] | None = None) -> dict[str, Any]:
    """`beside`: each seed's SB3 run goes at the same time as qfleet's, on one core set
    aside for it (SB3 is one process), qfleet on the others. `versus`: overrides of a
    second qfleet run per seed (`variant`), alternating with the first: an A/B of a
    config change on one machine."""
    path = Path(config) if config else default_config(env_id)
    overrides = [f"env.id={env_id}", *(overrides or [])]
    cfg = load_config(path, overrides)  # bad input is refused before anything runs
    every = max(1.0, seconds / points) if target is None else cfg.eval.every_s
    eval_args = [f"eval.every_s={every:g}", f"eval.episodes={episodes}"]
    runs: dict[str, list[dict[str, Any]]] = {"qfleet": []}
    if versus:
        if against:
            raise ConfigError("--versus: compares two qfleet configs; drop --against")
        load_config(path, [*overrides, *versus])  # the variant is refused up front too
        runs["variant"] = []
    if against:
        import importlib.util

        if against != "sb3" or importlib.util.find_spec("stable_baselines3") is None:
            raise ConfigError("--against sb3 needs stable-baselines3: pip install "
                              "'qfleet[bench]'" if against == "sb3" else
                              f"--against: expected sb3, got {against!r}")
        runs["sb3"] = []
        from qfleet.bench.sb3_dqn import zoo_hyperparameters

        try:
            zoo_hyperparameters(env_id, is_atari(env_id))
        except ValueError as err:
            raise ConfigError(f"--against sb3: {err}") from None
    if plot:
        _check_plot(plot)
    if beside and not against:
        raise ConfigError("--beside: runs SB3 beside qfleet; give --against sb3")
    if beside:
        if shutil.which("taskset") is None:
            raise ConfigError("--beside: needs taskset (util-linux) to pin each run")
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise ConfigError("--beside: needs 2 cores or more (one for SB3), this process "
                              "has 1")
        ours, theirs = set(cores[:-1]), {cores[-1]}
        for seed in range(first_seed, first_seed + seeds):
            with ThreadPoolExecutor(1) as pool:
                sb3 = pool.submit(_sb3, cfg, seed, seconds, target, every, episodes,
                                  cores=theirs)
                runs["qfleet"].append(_qfleet(path, [*overrides, f"env.seed={seed}",
                                                     *eval_args], seconds, target, cores=ours))
                runs["sb3"].append(sb3.result())
    for seed in range(first_seed, first_seed + seeds) if not beside else ():
        # Alternate who goes first, so that any drift of the machine favours neither.
        other = "variant" if versus else "sb3"
        for name in ("qfleet", other) if seed % 2 == 0 else (other, "qfleet"):
            if name == "qfleet":
                runs[name].append(_qfleet(path, [*overrides, f"env.seed={seed}", *eval_args],
                                          seconds, target))
            elif versus:
                runs[name].append(_qfleet(path, [*overrides, *versus, f"env.seed={seed}",
                                                 *eval_args], seconds, target))
            elif against:
                runs[name].append(_sb3(cfg, seed, seconds, target, every, episodes))
    result = {"env_id": env_id, "seconds": seconds, "target": target, "seeds": seeds,
              "first_seed": first_seed, "beside": beside,
              "episodes": episodes, "protocol": cfg.eval.protocol if is_atari(env_id) else None,
              "epsilon": cfg.eval.epsilon, "config": str(path), "overrides": overrides,
              "versus": versus or None,
              "runs": runs, "summary": {name: _summarize(r, target) for name, r in runs.items()}}
    if target is not None and (against or versus):
        ours, theirs = (result["summary"][k]["time_to_target_median_s"] for k in runs)
        result["time_ratio"] = None if None in (ours, theirs) else ours / theirs
    if target is not None and against:
        ours = result["summary"]["qfleet"]["time_to_target_median_s"]
        bare = result["summary"]["sb3"]["time_to_target_without_eval_median_s"]
        result["time_ratio_sb3_without_eval"] = (None if None in (ours, bare)
                                                  else ours / bare)
    if plot:
        _plot(result, plot)
        result["plot"] = plot
    return result


def _pinned(cores: set[int] | None) -> list[str]:
    """The command prefix that pins a process (and all it starts) to `cores`: `taskset`,
    not a `preexec_fn`, which may deadlock a child forked beside other threads."""
    if cores is None:
        return []
    return ["taskset", "-c", ",".join(map(str, sorted(cores)))]


def _qfleet(config: Path, overrides: list[str], seconds: float,
            target: float | None, cores: set[int] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qfleet-bench-learning-") as tmp:
        run_dir = Path(tmp) / "run"
        stop = [f"stop.time_s={seconds:g}",
                f"stop.target_return={'null' if target is None else target}"]
        started = time.time()
        proc = subprocess.run([*_pinned(cores), sys.executable, "-m", "qfleet.cli", "train",
                               str(config), *overrides, *stop, "--run-dir", str(run_dir)],
                              capture_output=True, text=True)
        wall = time.time() - started
        if proc.returncode != 0:
            raise RuntimeError(f"qfleet train failed (exit {proc.returncode}): "
                               f"{_last_line(proc.stderr)}")
        summary = json.loads((run_dir / "summary.json").read_text())
        sems = {e.step: e.value for e in scalars(run_dir, "eval/return_sem")}
        curve = [{"seconds": e.wall_time - started, "env_steps": e.step,
                  "return_mean": e.value, "return_sem": sems.get(e.step)}
                 for e in scalars(run_dir, "eval/return_mean")
                 if e.wall_time - started <= seconds]  # the budget counts start-up too
    return {"curve": curve, "wall_s": wall, "env_steps": summary["env_steps"],
            "updates": summary["updates"]}


def _sb3(cfg: Any, seed: int, seconds: float, target: float | None, every: float,
         episodes: int, cores: set[int] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qfleet-bench-sb3-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        started = time.time()
        spec.write_text(json.dumps({
            "started": started, "env_id": cfg.env.id, "atari": is_atari(cfg.env.id),
            "seed": seed, "seconds": seconds, "target": target, "every_s": every,
            "episodes": episodes, "epsilon": cfg.eval.epsilon, "protocol": cfg.eval.protocol,
            "max_steps": cfg.eval.max_episode_steps}))
        proc = subprocess.run([*_pinned(cores), sys.executable, "-m", "qfleet.bench.sb3_dqn",
                               str(spec), str(out)], capture_output=True, text=True)
        wall = time.time() - started
        if proc.returncode != 0:
            raise RuntimeError(f"the SB3 run failed (exit {proc.returncode}): "
                               f"{_last_line(proc.stderr)}")
        result = json.loads(out.read_text())
        result["curve"] = [p for p in result["curve"] if p["seconds"] <= seconds]
        return {**result, "wall_s": wall}


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no output)"


def time_to(curve: list[dict[str, Any]], target: float) -> float | None:
    return next((p["seconds"] for p in curve if p["return_mean"] >= target), None)


def _summarize(runs: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    last = [r["curve"][-1]["return_mean"] for r in runs if r["curve"]]
    out: dict[str, Any] = {
        "final_return_median": statistics.median(last) if last else None,
        "env_steps_median": statistics.median(r["env_steps"] for r in runs),
        "updates_median": statistics.median(r["updates"] for r in runs),
    }
    if target is not None:
        out["time_to_target_s"] = times = [time_to(r["curve"], target) for r in runs]
        out["time_to_target_median_s"] = _median_time(times)
        if any("eval_s" in p for r in runs for p in r["curve"]):
            # SB3's evaluations pause its training (qfleet's run beside it): its clock
            # without them, for the comparison that charges neither side for evaluating.
            bare = [time_to([{**p, "seconds": p["seconds"] - p["eval_s"]} for p in r["curve"]],
                            target) for r in runs]
            out["time_to_target_without_eval_s"] = bare
            out["time_to_target_without_eval_median_s"] = _median_time(bare)
    return out


def _median_time(times: list[float | None]) -> float | None:
    """The median time to target; a run that never reached it counts as slower than every
    run that did (None when the median itself is such a run)."""
    median = statistics.median(math.inf if t is None else t for t in times)
    return None if math.isinf(median) else median


def _check_plot(path: str) -> None:
    """Refuse a picture that could not be drawn before any run spends its budget."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'qfleet[bench]'") from None
    if not Path(path).resolve().parent.is_dir():
        raise ConfigError(f"--plot: no directory {str(Path(path).parent)!r}")


def _plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, runs), color in zip(result["runs"].items(), ("tab:blue", "tab:orange"),
                                   strict=False):
        for i, r in enumerate(runs):
            xs = [p["seconds"] for p in r["curve"]]
            ys = [p["return_mean"] for p in r["curve"]]
            errs = [p.get("return_sem") or 0.0 for p in r["curve"]]
            ax.errorbar(xs, ys, yerr=errs, color=color, alpha=0.8, marker="o", markersize=3,
                        capsize=2, label=name if i == 0 else None)
    ax.set_xlabel("wall-clock seconds since the command started")
    ax.set_ylabel(f"greedy return ({result['episodes']} episodes, ± s.e.)")
    ax.set_title(f"{result['env_id']}: learning per wall-clock second")
    if result["target"] is not None:
        ax.axhline(result["target"], color="gray", linestyle="--", linewidth=1)
    if is_atari(result["env_id"]) and (game := ale_game(result["env_id"])) in SCORES:
        ax.axhline(SCORES[game][0], color="gray", linestyle=":", linewidth=1,
                   label="random play")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe(result: dict[str, Any]) -> list[str]:
    lines = [f"{result['env_id']}: {result['seconds']:g} s budget, {result['seeds']} seed(s), "
             f"greedy evaluations of {result['episodes']} episodes"]
    for name, runs in result["runs"].items():
        s = result["summary"][name]
        for seed, r in enumerate(runs, result["first_seed"]):
            points = ", ".join(f"{p['seconds']:.0f}s:{p['return_mean']:.0f}"
                               for p in r["curve"])
            lines.append(f"  {name} seed {seed}: {r['env_steps']:,} env steps, "
                         f"{r['updates']:,} updates; {points}")
        if "time_to_target_s" in s:
            times = ", ".join("never" if t is None else f"{t:.1f}"
                              for t in s["time_to_target_s"])
            median = s["time_to_target_median_s"]
            lines.append(f"  {name}: time to {result['target']:g}: {times} s; median "
                         + ("never" if median is None else f"{median:.1f} s"))
            if "time_to_target_without_eval_median_s" in s:
                bare = s["time_to_target_without_eval_median_s"]
                lines.append(f"  {name} without its evaluation pauses: median "
                             + ("never" if bare is None else f"{bare:.1f} s"))
        elif s["final_return_median"] is not None:
            lines.append(f"  {name}: median final return {s['final_return_median']:.1f}")
    if result.get("versus"):
        lines.insert(1, f"  variant: the same config with {' '.join(result['versus'])}")
    if result.get("time_ratio") is not None:
        other = "variant" if result.get("versus") else "sb3"
        lines.append(f"  qfleet / {other} time to target: {result['time_ratio']:.2f}")
    if result.get("time_ratio_sb3_without_eval") is not None:
        lines.append("  qfleet / sb3 without its evaluation pauses: "
                     f"{result['time_ratio_sb3_without_eval']:.2f}")
    if result.get("plot"):
        lines.append(f"  picture: {result['plot']}")
    return lines


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The README's figure: the median time to the target (or final return) of each run
    kind, and their ratio."""
    seeds = f"median of {result['seeds']} seed{'s' if result['seeds'] > 1 else ''}"
    medians = []
    for name, s in result["summary"].items():
        if result.get("target") is not None:
            t = s["time_to_target_median_s"]
            medians.append(f"{name} {'never' if t is None else f'{t:.1f} s'}")
        elif s["final_return_median"] is not None:
            medians.append(f"{name} {s['final_return_median']:.1f}")
    if result.get("time_ratio") is not None:
        medians.append(f"ratio {result['time_ratio']:.2f}")
    if result.get("versus"):  # an A/B of one config: name the two by what differs
        medians = [m.replace("qfleet", "as configured", 1)
                   .replace("variant", f"with {' '.join(result['versus'])}", 1)
                   for m in medians]
    what = (f"{result['env_id']} time to greedy {result['target']:g}"
            if result.get("target") is not None else
            f"{result['env_id']} greedy return after {result['seconds']:g} s")
    return [(f"{what} ({seeds})", ", ".join(medians))]
