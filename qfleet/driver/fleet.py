"""The driver's loop: start the fleet, then a short list of timers until a reason to stop.

The driver never touches transitions or weights in steady state: it pulls one small
`FleetStats` from the learner per tick, and hands the work to three parts: placement
(where things run), supervision (what died and comes back) and the run record (what the
run leaves behind and why it ended).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup

from qfleet.config import Config
from qfleet.driver.failures import FleetFailure, describe_failure
from qfleet.driver.greedy_evaluations import VIDEO_GRACE_S, Evaluations
from qfleet.driver.placement import (
    autoscaler_present,
    check_placeable,
    ray_answers,
    resolve_actor_device,
    resolve_fleet,
)
from qfleet.driver.reporter import Rates, Reporter
from qfleet.driver.scaling import Scaling
from qfleet.driver.supervision import Supervisor
from qfleet.envs import EnvSpec
from qfleet.errors import QfleetError
from qfleet.evaluation.evaluator import Recording, Scores, protocol_name, training_protocol
from qfleet.runs.record import RunRecord, StopReason, learner_state
from qfleet.runs.storage import RunStorage
from qfleet.stats import Counters, FleetStats
from qfleet.transitions import Episode

TICK_S = 0.25


class Every:
    """A timer for the loop: `due(now)` is true once per `period_s`."""

    def __init__(self, period_s: float, start: float) -> None:
        self.period_s, self.last = period_s, start

    def due(self, now: float) -> bool:
        if now - self.last < self.period_s:
            return False
        self.last = now
        return True


class _Timers:
    """The loop's clocks: console and TensorBoard, scaling checks, evaluations, videos."""

    def __init__(self, config: Config, now: float) -> None:
        self.report, self.scale = Every(1.0, now), Every(2.0, now)
        self.evaluate = Every(config.eval.every_s, now)
        every = config.eval.video_every_s
        self.film = Every(every, now) if every else None


class Fleet:
    def __init__(self, config: Config, spec: EnvSpec, storage: RunStorage, *,
                 command_start: float, resume: dict[str, Any] | None = None,
                 reporter: Reporter | None = None, group: PlacementGroup | None = None,
                 trained_s: float = 0.0) -> None:
        """`resume`: a loaded checkpoint (and its replay) to continue from. `group`: a
        sweep trial's placement group, which holds the whole fleet (no autoscaler requests,
        no `auto` size). `trained_s`: training time its checkpoint's lineage spent already
        (a sweep trial's `stop.time_s` is its whole lineage's)."""
        self.config, self.spec = config, spec
        self.command_start = command_start
        self.resume = resume
        self.counters = Counters.from_dict(resume["counters"]) if resume else Counters()
        self.reporter = reporter or Reporter(config, storage.local,
                                             start_step=self.counters.env_steps)
        self.record = RunRecord(config, spec, storage, self.reporter, resume)
        self.group = group
        self.elastic = False
        self.sup: Supervisor | None = None
        self.scaling: Scaling | None = None
        self._timers: _Timers | None = None
        self.evaluations = 0  # greedy evaluations recorded so far
        self.trained_s = trained_s  # training time, as of the loop's last tick
        self._trained_before = trained_s
        self.summary: dict[str, Any] | None = None
        self.nodes: set[str] = set()
        self.chunks_over_budget = 0  # the newest learner's count (stats)
        self.eval_episodes_cut = 0  # the final evaluation's, cut by eval.final_time_s
        self.eval_mean: float | None = None
        self.eval_std: float | None = None
        self.eval_scores: Scores | None = None
        self.time_to_target: float | None = None
        self._next_checkpoint = self.counters.updates + config.log.checkpoint_every_updates
        self._nonfinite = (0, 0)  # (learner generation, skipped updates reported)
        self._last_report = (time.monotonic(), self.counters)
        self._train_start = time.monotonic()
        self._terminating = False  # a SIGTERM came: finish without waiting on evaluations
        self._cpu_actors_told: set[int] = set()  # placed on a GPU share, acting on the CPU

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until a reason to stop; write the final checkpoint and the summary."""
        self.prepare()
        # From here on a SIGTERM only asks the run to end: the start, the loop and the
        # final checkpoint and summary all complete first.
        with _stop_signals(self._terminate):
            try:
                self.start()
                self.advance()
            finally:  # first thing at the end: the autoscaler may let the nodes go
                if self.scaling is not None:
                    self.scaling.release()
            return self.end()

    def prepare(self) -> None:
        """Fix the fleet's size and refuse what the cluster can never host (`PlacementError`,
        bad input: nothing has started). A sweep trial's fleet is its placement group."""
        self.record.write_config(self.config)
        autoscaler = False
        if self.group is None:
            self.elastic = self.config.actors.num_actors == "auto"
            autoscaler = autoscaler_present()
            self.config = resolve_actor_device(resolve_fleet(self.config, autoscaler),
                                               autoscaler)
            self.record.config = self.config
        c = self.config
        self.reporter.hyperparameters(c, self.counters.env_steps)
        if self.group is None:
            check_placeable(c, autoscaler)
            self.scaling = Scaling(c, self.reporter, autoscaler=autoscaler,
                                   elastic=self.elastic)
        self.evals = Evaluations(c, self.spec, self.reporter, group=self.group)
        self.sup = Supervisor(c, self.spec, self.reporter, self._restart_state, self.evals,
                              group=self.group)

    def start(self) -> None:
        """Ask for the nodes the fleet lacks, start learner, actors and evaluator."""
        assert self.sup is not None
        with self._failures_end_the_run():
            if self.scaling is not None:
                self.scaling.start()
            self.sup.start(self._start_state())
            c = self.config
            self.reporter.print(
                f"qfleet: {c.env.id} | learner on {self.sup.learner_device} | "
                f"{c.actors.num_actors} actors x {c.actors.envs_per_actor} envs"
                f"{' acting on GPU shares' if c.actors.device == 'cuda' else ''} | "
                f"run dir {self.record.run_dir}")
            self._train_start = now = time.monotonic()
            self._last_report = (now, self.counters)
            self._timers = _Timers(c, now)

    def advance(self, until: Callable[[], bool] | None = None) -> None:
        """The loop, until a reason to stop (or `until()` holds: a sweep trial returns to
        Ray Tune after each evaluation)."""
        if self.record.stopped or self._timers is None:  # it never started
            return
        with self._failures_end_the_run():
            self._loop(until)

    def end(self) -> dict[str, Any]:
        """The final checkpoint, evaluation and summary (returned); once, whatever calls
        it again."""
        if self.summary is not None:
            return self.summary
        try:
            self.summary = self._finish()
            return self.summary
        finally:  # whatever happened there: the storage URI gets all there is
            self.record.sync(force=True, wait=True)

    @contextlib.contextmanager
    def _failures_end_the_run(self) -> Iterator[None]:
        """Whatever fails in the start or the loop ends the run with its reason; `end()`
        still writes the final checkpoint and the summary."""
        try:
            yield
        except QfleetError:  # the learner or the cluster refused the config: nothing ran
            raise
        except KeyboardInterrupt:
            self.record.stop(StopReason.INTERRUPTED, "interrupted (Ctrl-C)")
        except FleetFailure as failure:
            self.record.stop(failure.reason, str(failure))
        except ray.exceptions.RayError as err:  # Ray itself failed under the driver
            self.record.stop(StopReason.RAY_FAILURE, f"Ray failed: {describe_failure(err)}")
        except Exception as err:  # a bug of ours: still a checkpoint and a summary
            log = self.record.run_dir / "error.log"
            log.write_text(traceback.format_exc())
            self.record.stop(StopReason.ERROR, f"internal error {type(err).__name__}: "
                             f"{err} (traceback in {log})")

    def _terminate(self) -> None:
        self._terminating = True
        self.record.stop(StopReason.TERMINATED, "terminated (SIGTERM)")

    def _loop(self, until: Callable[[], bool] | None) -> None:
        assert self.sup is not None and self._timers is not None
        sup, scaling, t = self.sup, self.scaling, self._timers
        while not self.record.stopped and not (until is not None and until()):
            tick_end = time.monotonic() + TICK_S
            stats = sup.poll_stats(TICK_S)
            now = time.monotonic()
            if stats is not None:
                self._absorb(stats)
                if t.report.due(now):
                    self._report(stats, now)
                if stats.counters.updates >= self._next_checkpoint:
                    self.checkpoint()
                if (not self.evals.running and stats.counters.updates > 0
                        and t.evaluate.due(now)):
                    self.evals.launch(stats.weights)
                if (t.film is not None and not self.evals.filming and not self.evals.videos_off
                        and stats.counters.updates > 0 and t.film.due(now)):
                    self.evals.launch_video(stats.weights)
            sup.check_actors()
            if scaling is not None and t.scale.due(now):  # nodes that arrived (or did not)
                scaling.check(sup.streaming_actors, sup.learner_up)
                if self.elastic:
                    sup.grow()
            if (episodes := self.evals.collect()) is not None:
                self._record_eval(episodes)
            if (recording := self.evals.collect_video()) is not None:
                self._record_video(recording)
            self.record.sync()
            self.trained_s = self._trained_before + now - self._train_start
            self._check_budget(self.trained_s)
            # The learner answers stats at once: without this the loop would spin, its
            # pulls taking CPU and the learner's lock from training. An evaluation, video
            # or actor that ends meanwhile still cuts the tick short.
            sup.wait_for_events(tick_end - time.monotonic())

    # -- each tick -------------------------------------------------------------------------
    def _absorb(self, stats: FleetStats) -> None:
        assert self.sup is not None
        self.counters = stats.counters
        self.chunks_over_budget = stats.chunks_over_budget
        self.nodes |= stats.actor_nodes
        learner = stats.learner
        generation, seen = self._nonfinite
        if generation != self.sup.generation:  # a restarted learner counts from zero
            generation, seen = self.sup.generation, 0
        if learner.nonfinite_skipped > seen:
            self.reporter.print(
                f"warning: {learner.nonfinite_skipped - seen} update(s) skipped for a NaN/inf "
                f"loss ({learner.nonfinite_skipped} in all)")
            seen = learner.nonfinite_skipped
        self._nonfinite = (generation, seen)
        if learner.nonfinite_streak >= self.config.learner.max_nonfinite:
            self.record.stop(StopReason.NONFINITE_LOSS,
                             f"{learner.nonfinite_streak} NaN/inf losses in a row "
                             f"(learner.max_nonfinite={self.config.learner.max_nonfinite}); the "
                             "final checkpoint holds the last good weights")
        if self.config.actors.device == "cuda":
            on_cpu = {i for i, d in stats.actor_devices.items() if d != "cuda"}
            if on_cpu - self._cpu_actors_told:
                self.reporter.print(
                    f"warning: actor(s) {', '.join(map(str, sorted(on_cpu)))} act on the CPU:"
                    " torch in their process sees no GPU (actors.device: cuda)")
                self._cpu_actors_told |= on_cpu
        first = stats.counters.episodes - len(stats.episodes) + 1
        self.reporter.episodes(list(stats.episodes), first, stats.counters.env_steps)

    def _report(self, stats: FleetStats, now: float) -> None:
        assert self.sup is not None
        then, before = self._last_report
        dt = max(now - then, 1e-9)
        c = stats.counters
        # A restarted learner's update count may be back at its checkpoint's.
        rates = Rates(max(c.env_steps - before.env_steps, 0) / dt,
                      max(c.updates - before.updates, 0) / dt)
        self.reporter.scalars(stats, rates, c.env_steps)
        self.reporter.fleet(c.env_steps, actors=self.sup.running_actors,
                            actor_restarts=self.sup.actor_restarts,
                            learner_restarts=self.sup.learner_restarts,
                            chunks_dropped=self.sup.chunks_dropped,
                            nonfinite_skipped=stats.learner.nonfinite_skipped)
        self.reporter.status(now - self.command_start, c, rates, self.eval_mean)
        self._last_report = (now, c)

    def checkpoint(self) -> Path | None:
        """A checkpoint of the learner's state now (None while it restarts)."""
        assert self.sup is not None
        with_replay = self.config.replay.save_with_checkpoints and self._replay_fits()
        state = self.sup.learner_call("state", include_replay=with_replay)
        if state is None:
            return None  # the learner was lost; its restart sets the next checkpoint
        updates = int(state["counters"]["updates"])
        self._next_checkpoint = updates + self.config.log.checkpoint_every_updates
        try:
            return self.record.checkpoint(state)
        except OSError as err:  # a full disk, say: keep training, keep the older ones
            self.reporter.print(f"warning: checkpoint not written: {err}")
            return None

    def _replay_fits(self) -> bool:
        assert self.sup is not None
        if self.config.replay.kind == "none":
            return False
        nbytes = self.sup.learner_call("replay_bytes")
        return nbytes is not None and self.record.replay_fits(nbytes)

    def _record_eval(self, episodes: list[Episode]) -> None:
        self.evaluations += 1
        self.eval_scores = scores = Scores.of(self.config, episodes, self.config.eval.epsilon)
        self.eval_mean, self.eval_std = scores.return_mean, scores.return_std
        elapsed = time.monotonic() - self.command_start
        self.reporter.evaluation(scores, self.counters.env_steps, elapsed)
        target = self.config.stop.target_return
        if target is not None and self.eval_mean >= target and self.time_to_target is None:
            self.time_to_target = elapsed
            self.record.stop(StopReason.TARGET_RETURN,
                             f"greedy evaluation reached {self.eval_mean:.1f} (target "
                             f"{target:g}) {elapsed:.1f} s after the start")

    def _record_final(self, episodes: list[Episode]) -> None:
        """The final evaluation's episodes; those its time limit cut short are counted and
        said, never averaged in (a cut episode's return is no score)."""
        cut = [e for e in episodes if e.cut]
        self.eval_episodes_cut = len(cut)
        if cut:
            self.reporter.print(
                f"final evaluation: {len(cut)} of {len(episodes)} episodes cut short at "
                f"eval.final_time_s={self.config.eval.final_time_s:g} (left out of the mean)")
        if len(cut) < len(episodes):
            self._record_eval([e for e in episodes if not e.cut])

    def _last_video(self, sup: Supervisor) -> None:
        """A video being filmed when training ended: waited for up to VIDEO_GRACE_S, in 1 s
        slices so that a SIGTERM or a further Ctrl-C moves on to the summary at once."""
        deadline = time.monotonic() + VIDEO_GRACE_S
        try:
            while (self.evals.filming and not self._terminating
                   and time.monotonic() < deadline):
                if (recording := self.evals.collect_video(timeout=1.0)) is not None:
                    self._record_video(recording)
        except KeyboardInterrupt:
            self.reporter.print("video abandoned (Ctrl-C)")

    def _record_video(self, recording: Recording) -> None:
        """The filmed episode: its mp4 under `videos/` (uploaded with the run), its start
        in TensorBoard."""
        step = self.counters.env_steps
        path = self.record.run_dir / "videos" / f"eval-{step:012d}.mp4"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(recording.mp4)
        except OSError as err:
            self.reporter.print(f"video not written: {err}")
            return
        self.reporter.video(recording.gif, step)
        note = "" if recording.complete else " (cut short: the camera lost the episode)"
        self.reporter.print(f"video of a greedy episode (return {recording.episode.ret:.1f}): "
                            f"{path}{note}")

    def _check_budget(self, elapsed: float) -> None:
        stop, steps = self.config.stop, self.counters.env_steps
        if stop.env_steps is not None and steps >= stop.env_steps:
            self.record.stop(StopReason.ENV_STEPS, f"env-step budget spent ({steps:,} of "
                             f"stop.env_steps={stop.env_steps:,})")
        elif stop.time_s is not None and elapsed >= stop.time_s:
            self.record.stop(StopReason.TIME, f"time budget spent (stop.time_s="
                             f"{stop.time_s:g})")

    # -- starts and restarts -----------------------------------------------------------------
    def _start_state(self) -> dict[str, Any] | None:
        if self.resume is None:
            return None
        return learner_state(self.resume, self.resume["counters"], self.resume.get("replay"))

    def _restart_state(self) -> tuple[dict[str, Any], str]:
        state, counters, source = self.record.restart_state(self.counters)
        self._next_checkpoint = counters.updates + self.config.log.checkpoint_every_updates
        return state, source

    # -- the end -----------------------------------------------------------------------------
    def _finish(self) -> dict[str, Any]:
        assert self.sup is not None and self.record.stopped_by is not None
        sup, record = self.sup, self.record
        # A sweep trial's end: Ray Tune kills it 10 s after asking, so no replay save and
        # no wait for a video; nor after a benchmark's window.
        hurried = record.stopped_by in (StopReason.SWEEP, StopReason.MEASURED)
        # After a SIGTERM Ray may have died with this process (its process group): then
        # the newest checkpoint and the counters of the last report are what there is.
        ray_up = not self._terminating or ray_answers()
        if not ray_up:
            self.reporter.print("Ray is gone (stopped with this process): the summary "
                                "comes from the newest checkpoint and the last report")
        final = sup.stop_learner() if ray_up else None
        if final is not None:
            network = final["network"]
            self.counters = Counters.from_dict(final["counters"])
            try:
                self.reporter.print(f"checkpoint written: {record.checkpoint(final)}")
                if not hurried:
                    self._save_replay(self.counters.updates)
            except OSError as err:
                self.reporter.print(f"error: final checkpoint not written: {err}")
            if not hurried:
                self._last_video(sup)
            if record.stopped_by.budget:  # the summary reports the final weights' return
                try:
                    episodes = self.evals.final(network, lambda: self._terminating)
                except KeyboardInterrupt:  # a further Ctrl-C exits at once
                    self.reporter.print("final evaluation abandoned (Ctrl-C)")
                    episodes = None
                if episodes is not None:
                    self._record_final(episodes)
        path = record.newest_checkpoint()
        wall = time.monotonic() - self.command_start
        s = self.counters
        saved = (self.resume or {}).get("replay")
        scores = self.eval_scores
        summary = record.write_summary({
            "env_id": self.config.env.id,
            "env_steps": s.env_steps,
            "updates": s.updates,
            "episodes": s.episodes,
            "wall_time_s": round(wall, 3),
            "train_time_s": round(time.monotonic() - self._train_start, 3),
            "eval_return_mean": self.eval_mean,
            "eval_return_std": self.eval_std,
            "eval_return_sem": scores and scores.return_sem,
            "eval_episodes": len(scores.episodes) if scores else 0,
            "eval_episodes_cut": self.eval_episodes_cut,
            "eval_protocol": protocol_name(self.config),
            "train_protocol": training_protocol(self.config),
            "eval_epsilon": self.config.eval.epsilon,
            "human_normalized_score_mean": scores and scores.human_normalized_score_mean,
            "target_return": self.config.stop.target_return,
            "time_to_target_s": (None if self.time_to_target is None
                                 else round(self.time_to_target, 3)),
            "actor_restarts": sup.actor_restarts,
            "learner_restarts": sup.learner_restarts,
            "chunks_dropped": sup.chunks_dropped,
            "chunks_over_budget": self.chunks_over_budget,
            "actor_nodes": len(self.nodes),
            "actor_node_ids": sorted(self.nodes),
            "learner_node_id": sup.learner_node,
            "num_actors": len(sup.actors),
            "learner_device": sup.learner_device,
            "checkpoint": None if path is None else str(path),
            "replay_restored": int(saved["size"]) if saved else 0,
        })
        self.reporter.status(wall, s, Rates(s.env_steps / max(wall, 1e-9),
                                            s.updates / max(wall, 1e-9)),
                             self.eval_mean, force=True)
        self.reporter.close()
        if not self._terminating or ray_answers():  # a dead Ray would keep us a minute
            sup.shutdown()
        return summary

    def _save_replay(self, updates: int) -> None:
        """Keep the replay for --resume (after the final checkpoint)."""
        assert self.sup is not None
        if not self.config.replay.save_on_exit or not self._replay_fits():
            return
        replay = self.sup.learner_call("replay_state")
        if replay is not None and replay["size"] > 0:
            self.record.save_replay(updates, replay)


@contextlib.contextmanager
def _stop_signals(terminate: Callable[[], None]) -> Iterator[None]:
    """SIGTERM (`ray job stop`, Kubernetes) ends the run like Ctrl-C, with exit code 143.
    Signals can only be caught on the main thread; elsewhere the caller handles them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: terminate())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
