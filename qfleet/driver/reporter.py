"""What a person watches: console progress, episode lines and TensorBoard scalars.

The driver hands every stats pull to `Reporter`; it decides what to print (at a readable
rate) and writes every scalar to TensorBoard against the fleet's env-step count.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.tensorboard import SummaryWriter

from qfleet.config import Config
from qfleet.evaluation.evaluator import Scores
from qfleet.stats import Counters, FleetStats
from qfleet.transitions import Episode


class Rates(NamedTuple):
    env_steps_per_s: float
    updates_per_s: float


def describe_episode(number: int, episode: Episode) -> str:
    """One line per episode, as the course prints it: number, duration, return, outcome."""
    outcome = "terminated" if episode.terminated else "truncated (time limit)"
    return (f"episode {number:>6,} | {episode.length:>6,} steps | "
            f"return {episode.ret:>9.2f} | {outcome}")


class Reporter:
    def __init__(self, config: Config, run_dir: Path, start_step: int = 0,
                 console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console(stderr=False, highlight=False)
        self.writer = SummaryWriter(str(run_dir), purge_step=start_step or None)
        self._closed = False
        self.recent: deque[float] = deque(maxlen=100)
        self._last_episode_line = 0.0
        self._unprinted = 0
        self._last_status = time.monotonic()
        self._progress: Progress | None = None
        self._task = None
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]qfleet[/]"), BarColumn(), TimeElapsedColumn(),
                TextColumn("{task.description}"), console=self.console, transient=True)
            total = config.stop.env_steps or None
            self._task = self._progress.add_task("starting", total=total)
            self._progress.start()

    def print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def episodes(self, episodes: list[Episode], first_number: int, step: int) -> None:
        for ep in episodes:
            self.recent.append(ep.ret)
            self.writer.add_scalar("charts/episodic_return", ep.ret, step)
            self.writer.add_scalar("charts/episodic_length", ep.length, step)
        if not episodes:
            return
        now = time.monotonic()
        if now - self._last_episode_line >= self.config.log.episode_every_s:
            skipped = self._unprinted + len(episodes) - 1
            more = f"  (+{skipped:,} more since the last line)" if skipped else ""
            self.print(describe_episode(first_number + len(episodes) - 1, episodes[-1]) + more)
            self._last_episode_line = now
            self._unprinted = 0
        else:
            self._unprinted += len(episodes)

    def scalars(self, stats: FleetStats, rates: Rates, step: int) -> None:
        w, learner = self.writer, stats.learner
        w.add_scalar("charts/SPS", rates.env_steps_per_s, step)  # CleanRL's tag names
        w.add_scalar("perf/updates_per_s", rates.updates_per_s, step)
        w.add_scalar("replay/size", learner.replay_size, step)
        w.add_scalar("learner/updates", stats.counters.updates, step)
        for value, tag in ((learner.loss, "losses/td_loss"), (learner.mean_q, "losses/q_values"),
                           (learner.epsilon, "charts/epsilon"),
                           (learner.policy_lag, "perf/policy_lag")):
            if value is not None:
                w.add_scalar(tag, value, step)

    def hyperparameters(self, config: Config, step: int) -> None:
        """The resolved config, as text (`config`, YAML) and in TensorBoard's HPARAMS tab,
        where runs of different configs sit side by side against their greedy returns."""
        from torch.utils.tensorboard.summary import hparams

        data = config.to_dict()
        text = yaml.safe_dump(data, sort_keys=False)
        self.writer.add_text("config", "```yaml\n" + text + "```", step)
        flat = {f"{section}.{key}": value if isinstance(value, bool | int | float | str)
                else json.dumps(value)
                for section, keys in data.items() for key, value in keys.items()}
        # Into this run's own event file (SummaryWriter.add_hparams would make a new run).
        for summary in hparams(flat, {"eval/return_mean": float("nan")}):
            self.writer.file_writer.add_summary(summary, step)

    def fleet(self, step: int, **counts: int) -> None:
        """The fleet's health counters (`fleet/<name>`): actors, restarts, losses."""
        for name, value in counts.items():
            self.writer.add_scalar(f"fleet/{name}", value, step)

    def status(self, elapsed: float, counters: Counters, rates: Rates,
               last_eval: float | None, force: bool = False) -> None:
        recent = sum(self.recent) / len(self.recent) if self.recent else float("nan")
        text = (f"env steps {counters.env_steps:,} ({rates.env_steps_per_s:,.0f}/s) | "
                f"updates {counters.updates:,} ({rates.updates_per_s:,.0f}/s) | "
                f"return {recent:.1f} (last {len(self.recent)})")
        if last_eval is not None:
            text += f" | eval {last_eval:.1f}"
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=counters.env_steps, description=text)
        now = time.monotonic()
        if force or (self._progress is None and
                     now - self._last_status >= self.config.log.console_every_s):
            self.print(f"[{elapsed:7.1f}s] {text}")
            self._last_status = now

    def evaluation(self, scores: Scores, step: int, elapsed: float) -> None:
        """One evaluation: returns, the human-normalized score (on Atari-57 games) and
        episode lengths in frames."""
        returns = [e.ret for e in scores.episodes]
        mean, sem = scores.return_mean, scores.return_sem
        self.writer.add_scalar("eval/return_mean", mean, step)
        if sem is not None:
            self.writer.add_scalar("eval/return_sem", sem, step)
        self.writer.add_scalar("eval/return_max", max(returns), step)
        self.writer.add_scalar("eval/return_min", min(returns), step)
        frames = [scores.frames(e) for e in scores.episodes]
        self.writer.add_scalar("eval/episode_frames", sum(frames) / len(frames), step)
        hns = scores.human_normalized_score_mean
        if hns is not None:
            self.writer.add_scalar("eval/human_normalized_score", hns, step)
        setting = f"ε={scores.epsilon:g}"
        if scores.protocol:
            setting = f"{scores.protocol}, {setting}"
        spread = "" if sem is None else f" ± {sem:.2f}"
        line = (f"[{elapsed:7.1f}s] greedy eval ({setting}) over {len(returns)} episodes: mean "
                f"return {mean:.2f}{spread} (min {min(returns):.1f}, max {max(returns):.1f})")
        if hns is not None:
            line += f", human-normalized {hns:.3f}"
        self.print(line)

    def video(self, gif: bytes, step: int) -> None:
        """A filmed greedy episode, in TensorBoard's IMAGES tab as `eval/video`."""
        from qfleet.video import gif_summary

        self.writer.file_writer.add_summary(gif_summary("eval/video", gif), step)

    def flush(self) -> None:
        """TensorBoard's events onto disk (before an upload); nothing once closed."""
        if not self._closed:
            self.writer.flush()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self.writer.flush()
        self.writer.close()
        self._closed = True
