"""Supervision: the lifecycles of the learner and the actors (the `Evaluations` the Fleet
hands it start beside the learner's node and stop with the fleet).

Everything that can die is watched here and brought back: a lost learner is restarted
from the newest checkpoint and the running actors are pointed at it; a dead actor is
restarted with a growing backoff. Each has a budget, and a part that keeps failing past it
ends the run (`FleetFailure`) with its own error.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup

from qfleet.actors.worker import RemoteActor
from qfleet.config import Config
from qfleet.driver.failures import FleetFailure, describe_failure
from qfleet.driver.greedy_evaluations import Evaluations
from qfleet.driver.placement import (
    LEARNER_BUNDLE,
    actor_bundle,
    actor_options,
    bundles_in,
    in_bundle,
    learner_bundle,
    learner_options,
    shape,
)
from qfleet.driver.reporter import Reporter
from qfleet.envs import EnvSpec
from qfleet.errors import QfleetError
from qfleet.learner.worker import RemoteLearner
from qfleet.runs.record import StopReason
from qfleet.stats import FleetStats

UNREACHABLE_S = 20.0
"""A learner unreachable (not dead) this long is given up on and restarted."""
STATS_TIMEOUT_S = 60.0
"""A learner that does not answer a stats pull this long is hung: it is restarted."""
CALL_TIMEOUT_S = 300.0
"""The longest any other call to the learner may take (a checkpoint with its replay)."""
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
WAITING_NOTE_S = 30.0
"""How often a learner restart that waits for a node says so."""


def _learner_start_error(err: BaseException) -> BaseException:
    """A learner that refused its config (replay too big for its GPU, no GPU visible) is
    bad input: its own error, carried across Ray by type."""
    cause = err
    while isinstance(cause, ray.exceptions.RayTaskError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, QfleetError):
        return cause
    return FleetFailure(StopReason.RAY_FAILURE,
                        f"the learner failed to start: {describe_failure(err)}")


class Supervisor:
    def __init__(self, config: Config, spec: EnvSpec, reporter: Reporter,
                 restart_state: Callable[[], tuple[dict[str, Any], str]], evals: Evaluations,
                 *, group: PlacementGroup | None = None) -> None:
        """`restart_state()` gives a restarted learner its start state and a description
        of where it comes from (the run record knows the newest checkpoint). `group`: a
        sweep trial's placement group; each part (and its restarts) keeps its bundle."""
        self.config, self.spec, self.reporter = config, spec, reporter
        self.group = group
        self._cfg = config.to_dict()
        self._restart_state = restart_state
        # The learner.
        self.learner: Any = None
        self.generation = 0
        self.learner_restarts = 0
        self.learner_device = "?"
        self.learner_node: str | None = None
        self._stats_ref: ray.ObjectRef | None = None
        self._stats_since = 0.0
        self._unreachable_since: float | None = None
        self._starting: tuple[ray.ObjectRef, float] | None = None
        self._waiting_noted = 0.0  # when a waiting restart last said so
        self._switches: list[ray.ObjectRef] = []
        self.chunks_dropped = 0
        self.started = False  # the first learner is up (a run can end before it is)
        self._finishing = False  # the run is ending: a lost learner is not restarted
        # The actors.
        self.actors: dict[int, Any] = {}
        self.runs: dict[ray.ObjectRef, int] = {}
        self.actor_restarts = 0
        self._failures: dict[int, deque[float]] = {}
        self._due: dict[int, float] = {}  # actor index -> when its restart is due
        self._chunks: dict[int, int] = {}
        self._chunks_at_start: dict[int, int] = {}
        self.evals = evals

    # -- start and stop ----------------------------------------------------------------------
    def start(self, state: dict[str, Any] | None) -> None:
        """Create learner, actors and evaluator at once (their start-ups overlap); wait for
        the learner, within `learner.start_timeout_s`."""
        self.learner = self._new_learner(state)
        for i in range(int(self.config.actors.num_actors)):
            self._start_actor(i)
        ref = self.learner.placement.remote()
        ready, _ = ray.wait([ref], timeout=self.config.learner.start_timeout_s)
        if not ready:
            raise FleetFailure(StopReason.RAY_FAILURE, "the learner did not start within "
                               f"learner.start_timeout_s={self.config.learner.start_timeout_s:g}"
                               " s (no node can host it?)")
        try:
            self._placed(ray.get(ref))
        except ray.exceptions.RayError as err:
            raise _learner_start_error(err) from None
        self.started = True
        self.evals.start(self.learner_node)

    def stop_learner(self) -> dict[str, Any] | None:
        """Stop learning (actors stop at their next send); the final state, or None when
        the learner is gone."""
        self._finishing = True
        self._collect_switches(timeout=5.0)  # chunks lost to a restart just before the end
        if not self.started or self._starting is not None or self.learner is None:
            return None
        try:
            return ray.get(self.learner.stop.remote(), timeout=CALL_TIMEOUT_S)
        except ray.exceptions.RayError as err:
            self.reporter.print(f"learner lost at the end ({describe_failure(err)}); "
                                "the newest checkpoint holds its weights")
            return None

    def learner_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A call to the learner that notices its loss (and starts its restart): None
        then, while it restarts, or while it is unreachable for a moment."""
        if self._starting is not None or self.learner is None:
            return None
        try:
            return ray.get(getattr(self.learner, method).remote(*args, **kwargs),
                           timeout=CALL_TIMEOUT_S)
        except ray.exceptions.ActorUnavailableError:
            return None  # a network blip: the stats pulls decide whether it is lost
        except ray.exceptions.GetTimeoutError:
            self._learner_lost(f"it did not answer {method}() within {CALL_TIMEOUT_S:g} s")
        except ray.exceptions.RayError as err:
            self._learner_lost(describe_failure(err))
        return None

    def shutdown(self) -> None:
        """Abandon whatever still runs: actors waiting for a learner, an evaluation."""
        for actor in self.actors.values():
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.evals.shutdown()

    # -- the learner -------------------------------------------------------------------------
    def _new_learner(self, state: dict[str, Any] | None) -> Any:
        opts = in_bundle(learner_options(self.config), self.group, LEARNER_BUNDLE)
        return RemoteLearner.options(**opts).remote(self._cfg, self.spec, state)

    @property
    def learner_up(self) -> bool:
        return self._starting is None

    def poll_stats(self, timeout: float) -> FleetStats | None:
        """The learner's stats, waiting up to `timeout`; None when not there yet, or while
        a lost learner restarts (which this drives)."""
        if self._starting is not None:
            time.sleep(timeout)
            self._check_restart()
            return None
        if self._stats_ref is None:
            self._stats_ref = self.learner.stats.options(enable_task_events=False).remote()
            self._stats_since = time.monotonic()
        ready, _ = ray.wait([self._stats_ref], timeout=timeout)
        if not ready:
            if time.monotonic() - self._stats_since > STATS_TIMEOUT_S:
                self._learner_lost(f"it did not answer for {STATS_TIMEOUT_S:g} s (hung)")
            return None
        ref, self._stats_ref = self._stats_ref, None
        try:
            stats = ray.get(ref)
        except ray.exceptions.ActorUnavailableError as err:
            now = time.monotonic()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since >= UNREACHABLE_S:
                self._learner_lost(describe_failure(err))
            return None
        except ray.exceptions.RayError as err:
            self._learner_lost(describe_failure(err))
            return None
        self._unreachable_since = None
        self._chunks = stats.chunks_by_actor
        return stats

    def _learner_lost(self, reason: str) -> None:
        """Restart the learner from the newest checkpoint, or end the run past the budget."""
        self._stats_ref, self._unreachable_since = None, None
        with contextlib.suppress(Exception):
            ray.kill(self.learner, no_restart=True)
        if self._finishing:
            self.learner = None
            self.reporter.print(f"learner lost at the end ({reason})")
            return
        budget = self.config.learner.max_restarts
        if self.learner_restarts >= budget:
            self.learner = None
            raise FleetFailure(StopReason.LEARNER_LOST,
                               f"the learner was lost ({reason}) after {self.learner_restarts} "
                               f"restart(s); learner.max_restarts={budget} allows no more")
        self.learner_restarts += 1
        state, source = self._restart_state()
        self.reporter.print(f"learner lost ({reason}); restarting it from {source} "
                            f"(restart {self.learner_restarts} of {budget})")
        self.generation += 1
        self.learner = self._new_learner(state)
        self._starting = (self.learner.placement.remote(), time.monotonic())
        self._waiting_noted = 0.0

    def _placed(self, placement: tuple[str, str, list[str]]) -> None:
        self.learner_device, self.learner_node, notes = placement
        for note in notes:
            self.reporter.print(f"learner: {note}")

    def _check_restart(self) -> None:
        """Once the restarted learner is up, point every running actor at it."""
        assert self._starting is not None
        ref, since = self._starting
        waited = time.monotonic() - since
        if not ray.wait([ref], timeout=0)[0]:
            limit = self.config.learner.start_timeout_s
            if waited > limit:
                self._starting = None
                self._learner_lost(f"its restart did not come up within {limit:g} s")
            elif waited - self._waiting_noted >= WAITING_NOTE_S:
                # Its node is gone: a silent wait for another (or the autoscaler's) looks hung.
                self._waiting_noted = waited
                self.reporter.print(
                    f"learner restart waiting {waited:.0f} s for a node with "
                    f"{shape(learner_bundle(self.config))} (gives up after "
                    f"learner.start_timeout_s={limit:g} s)")
            return
        try:
            self._placed(ray.get(ref))
        except ray.exceptions.RayError as err:
            self._starting = None
            self._learner_lost(f"its restart failed: {describe_failure(err)}")
            return
        self._starting = None
        # The new learner counts chunks from zero: an actor is streaming again once it
        # sent its first (what `grow` waits for).
        self._chunks, self._chunks_at_start = {}, dict.fromkeys(self.actors, 0)
        self._switches += [actor.set_learner.remote(self.learner, self.generation)
                           for actor in self.actors.values()]
        self.reporter.print(f"learner back on {self.learner_device} after {waited:.1f} s; "
                            f"{len(self._switches)} actor(s) pointed at it")

    def _collect_switches(self, timeout: float = 0.0) -> None:
        """Chunks the actors lost with the old learner, as they report switching."""
        if not self._switches:
            return
        done, self._switches = ray.wait(self._switches, num_returns=len(self._switches),
                                        timeout=timeout)
        for ref in done:
            with contextlib.suppress(ray.exceptions.RayError):  # a dead actor: its restart
                self.chunks_dropped += int(ray.get(ref))

    # -- the actors --------------------------------------------------------------------------
    def _start_actor(self, index: int) -> None:
        seed = self.config.env.seed + 1000 * index + 7919 * self.actor_restarts + 1
        opts = in_bundle(actor_options(self.config), self.group, LEARNER_BUNDLE + 1 + index)
        actor = RemoteActor.options(**opts).remote(
            self._cfg, self.spec, index, seed, self.learner, self.generation)
        self.actors[index] = actor
        self.runs[actor.run.remote()] = index
        self._chunks_at_start[index] = self._chunks.get(index, 0)

    def wait_for_events(self, timeout: float) -> None:
        """Wait up to `timeout` seconds, less when an evaluation, a video or an actor's
        loop ends."""
        if timeout <= 0:
            return
        refs = [*self.runs, *self.evals.pending]
        if refs:
            ray.wait(refs, num_returns=1, timeout=timeout)
        else:
            time.sleep(timeout)

    def check_actors(self) -> None:
        """Restart actors whose loop ended with an error, each after a backoff that doubles
        with its restarts inside `actors.restart_window_s`; past `actors.max_restarts`
        there, the run fails with the actor's own error."""
        self._collect_switches()
        now = time.monotonic()
        if self.runs:
            done, _ = ray.wait(list(self.runs), num_returns=len(self.runs), timeout=0)
            for ref in done:
                index = self.runs.pop(ref)
                try:
                    ray.get(ref)
                    continue  # a clean return: the learner told it to stop
                except ray.exceptions.RayError as err:
                    self._actor_failed(index, describe_failure(err), now)
        for index, due in list(self._due.items()):
            if now >= due:
                del self._due[index]
                self._start_actor(index)

    def _actor_failed(self, index: int, reason: str, now: float) -> None:
        a = self.config.actors
        failures = self._failures.setdefault(index, deque())
        while failures and now - failures[0] > a.restart_window_s:
            failures.popleft()
        failures.append(now)
        if len(failures) > a.max_restarts:
            raise FleetFailure(StopReason.ACTOR_FAILURES,
                               f"actor {index} failed {len(failures)} times within "
                               f"{a.restart_window_s:g} s (actors.max_restarts="
                               f"{a.max_restarts}); its last error: {reason}")
        delay = min(BACKOFF_FIRST_S * 2 ** (len(failures) - 1), BACKOFF_MAX_S)
        self.actor_restarts += 1
        self.reporter.print(f"actor {index} died ({reason}); restarting it in {delay:.1f} s "
                            f"(restart #{self.actor_restarts})")
        with contextlib.suppress(Exception):
            ray.kill(self.actors[index], no_restart=True)
        self._due[index] = now + delay

    def grow(self) -> None:
        """An `auto` fleet takes the free resources of nodes that joined: as many actors as
        they hold, once every actor started so far is streaming (Ray's view of what is free
        lags the actors just started)."""
        a = self.config.actors
        if len(self.actors) >= a.fleet_size or not self.learner_up:
            return
        if self.streaming_actors < len(self.actors):
            return
        room = min(bundles_in(ray.available_resources(), actor_bundle(self.config)),
                   a.fleet_size - len(self.actors))
        if room > 0:
            first = max(self.actors) + 1
            self.reporter.print("a node with free CPUs joined: starting actor "
                                + (f"{first}" if room == 1 else f"{first}..{first + room - 1}"))
            for index in range(first, first + room):
                self._start_actor(index)

    @property
    def streaming_actors(self) -> int:
        """Actors that sent the current learner a chunk since they (re)started: placed on a
        node, with their envs up."""
        return sum(self._chunks.get(i, 0) > n for i, n in self._chunks_at_start.items())

    @property
    def running_actors(self) -> int:
        return len(self.runs)
