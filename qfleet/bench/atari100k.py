"""`qfleet bench atari100k`: the Atari 100k benchmark (Kaiser et al. 2020) per game, beside
the published scores of Data-Efficient Rainbow and BBF.

Each game and seed is one real `qfleet train` of `configs/atari-100k.yaml` (DER's
hyperparameters under the protocol: 100k agent steps, no sticky actions, up to 30 no-op
starts, a life loss ends a training episode, 27,000-step episodes), scored by its final
greedy evaluation (100 episodes under `noop30`). Scores are human-normalized against the
Atari-57 random and human scores (`atari_scores.py`); their interquartile mean over every
run is the benchmark's usual aggregate (Agarwal et al. 2021, rliable).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qfleet.atari_scores import SCORES, human_normalized
from qfleet.config import ConfigError, load_config
from qfleet.envs import ale_game
from qfleet.presets import preset

GAMES = ("BattleZone", "Qbert", "Pong", "SpaceInvaders")
"""In DER's table and BBF's (BattleZone, Qbert, Pong), and the design card's game."""

PUBLISHED: dict[str, dict[str, float]] = {
    # Data-Efficient Rainbow at 100k (van Hasselt et al. 2019), as SPR's comparison
    # tabulates it (`der_scores`): mila-iqia/spr, analysis/100k_comparison.ipynb, commit
    # 2127aa2cbb1305e3f6fbb2602cbcfbeb7ceece1c. SpaceInvaders is not one of its 26 games.
    "DER": {"battle_zone": 10124.6, "qbert": 1152.9, "pong": -19.3},
    # BBF (Schwarzer et al. 2023) at replay ratio 8: the mean GameScoreAverage of every run
    # of a game in google-research/google-research, bigger_better_faster/scores/
    # RR8_BBF.csv, commit 5e786838e9825e74992a9884bc079d46734f1baf (60, 60, 56 and 20
    # runs; the file holds two sets of runs, pooled here).
    "BBF": {"battle_zone": 25698.8, "qbert": 4216.9, "pong": 16.4,
            "space_invaders": 750.9},
}
PUBLISHED_SOURCES = {
    "DER": "mila-iqia/spr analysis/100k_comparison.ipynb @2127aa2c (der_scores)",
    "BBF": "google-research/google-research bigger_better_faster/scores/RR8_BBF.csv "
           "@5e786838 (mean of GameScoreAverage over every run of the game)",
}


def default_config() -> Path:
    return preset("atari-100k.yaml")


def iqm(values: list[float]) -> float | None:
    """Interquartile mean: the mean of the middle half (a quarter cut from each end, as
    scipy's `trim_mean(x, 0.25)`, which rliable uses)."""
    if not values:
        return None
    ordered = sorted(values)
    cut = int(0.25 * len(ordered))
    middle = ordered[cut:len(ordered) - cut]
    return statistics.mean(middle)


def _train(config: Path, game: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qfleet-bench-atari100k-") as tmp:
        run_dir = Path(tmp) / "run"
        proc = subprocess.run([sys.executable, "-m", "qfleet.cli", "train", str(config),
                               f"env.id=ALE/{game}-v5", f"env.seed={seed}", *overrides,
                               "--run-dir", str(run_dir)], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or ["(no output)"]
            raise RuntimeError(f"{game} seed {seed}: qfleet train failed (exit "
                               f"{proc.returncode}): {lines[-1]}")
        summary = json.loads((run_dir / "summary.json").read_text())
    keys = ("eval_return_mean", "eval_return_sem", "eval_episodes", "env_steps", "updates",
            "wall_time_s", "train_protocol", "eval_protocol")
    return {"game": game, "seed": seed, **{k: summary.get(k) for k in keys}}


def run(games: list[str], seeds: int = 2, first_seed: int = 0, config: str | None = None,
        overrides: list[str] | None = None, parallel: int = 1) -> dict[str, Any]:
    path = Path(config) if config else default_config()
    overrides = list(overrides or [])
    for game in games:  # bad input is refused before any run spends its budget
        roms = ale_game(f"ALE/{game}-v5")
        if roms not in SCORES:
            raise ConfigError(f"--games: {game!r} is not an Atari-57 game (e.g. "
                              f"{', '.join(GAMES)})")
        load_config(path, [f"env.id=ALE/{game}-v5", *overrides])
    jobs = [(game, seed) for seed in range(first_seed, first_seed + seeds) for game in games]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        runs = list(pool.map(lambda job: _train(path, job[0], job[1], overrides), jobs))
    table, normalized = [], []
    for game in games:
        rom = ale_game(f"ALE/{game}-v5")
        scores = [r["eval_return_mean"] for r in runs
                  if r["game"] == game and r["eval_return_mean"] is not None]
        hns = [h for s in scores if (h := human_normalized(rom, s)) is not None]
        normalized += hns
        random, human = SCORES[rom]
        table.append({
            "game": game, "runs": len(scores),
            "mean": statistics.mean(scores) if scores else None,
            "sem": (statistics.stdev(scores) / len(scores) ** 0.5) if len(scores) > 1
            else None,
            "human_normalized": statistics.mean(hns) if hns else None,
            "random": random, "human": human,
            **{name: scores_of.get(rom) for name, scores_of in PUBLISHED.items()}})
    protocols = sorted({f"{r['train_protocol']}/{r['eval_protocol']}" for r in runs})
    return {"bench": "atari100k", "config": str(path), "overrides": overrides,
            "seeds": seeds, "first_seed": first_seed, "protocols": protocols,
            "comparable": protocols == ["atari100k/noop30"],
            "games": table, "runs": runs, "iqm_human_normalized": iqm(normalized),
            "published_sources": PUBLISHED_SOURCES}


def describe(result: dict[str, Any]) -> list[str]:
    def num(value: float | None, spec: str = ",.1f") -> str:
        return "—" if value is None else format(value, spec)

    lines = [f"Atari 100k, {result['seeds']} seed(s) a game, {result['config']} "
             f"{' '.join(result['overrides'])}".rstrip(),
             f"{'game':<14} {'qfleet':>18} {'DER':>10} {'BBF':>10} {'random':>9} "
             f"{'human':>9} {'qfleet HNS':>10}"]
    for g in result["games"]:
        ours = num(g["mean"]) + (f" ± {g['sem']:,.1f}" if g["sem"] is not None else "")
        lines.append(f"{g['game']:<14} {ours:>18} {num(g['DER']):>10} {num(g['BBF']):>10} "
                     f"{num(g['random']):>9} {num(g['human']):>9} "
                     f"{num(g['human_normalized'], '.3f'):>10}")
    lines.append(f"IQM of human-normalized scores over all runs: "
                 f"{num(result['iqm_human_normalized'], '.3f')}")
    if not result["comparable"]:
        lines.append(f"protocol {', '.join(result['protocols'])}: not the Atari 100k protocol "
                     "(atari100k training, noop30 evaluation); not comparable with DER or BBF")
    return lines
