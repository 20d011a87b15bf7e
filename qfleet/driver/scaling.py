"""Scaling: ask Ray's autoscaler for the nodes the fleet needs, and watch them come.

A fleet that needs more than the cluster has asks once for all of it, the learner and
every actor (`request_resources` replaces an earlier request rather than adding to it).
The actors that do not fit yet wait in Ray's queue and start as nodes arrive. When no new
actor starts streaming for `actors.scale_timeout_s` while the learner is up, a fixed fleet
on an autoscaling cluster ends the run (the nodes it needs do not come); an `auto` fleet,
or one on a cluster whose nodes join by hand, runs with what it has. The request is
withdrawn at the end, so the autoscaler can let the nodes go.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from ray.autoscaler.sdk import request_resources

from qfleet.config import Config
from qfleet.driver.failures import FleetFailure
from qfleet.driver.placement import (
    actor_bundle,
    actors_that_fit,
    learner_bundle,
    shape,
    standing_request,
)
from qfleet.driver.reporter import Reporter
from qfleet.runs.record import StopReason


class Scaling:
    """The fleet's one request for nodes, from `start()` to `release()`; `check()` follows
    the actors it brings."""

    def __init__(self, config: Config, reporter: Reporter, *, autoscaler: bool,
                 elastic: bool, clock: Callable[[], float] = time.monotonic) -> None:
        """`autoscaler`: one watches the cluster (else nodes join by hand); `elastic`: an
        `auto` fleet, content with fewer actors than it asked for."""
        self.config, self.reporter = config, reporter
        self.autoscaler, self.elastic = autoscaler, elastic
        self.clock = clock
        self.wanted = int(config.actors.num_actors)
        self.requested = False
        self.waiting = False
        self.streaming = 0  # the most actors seen streaming at once
        self._start = self._progress = clock()
        self._paused = True  # no actor can stream before the learner is up

    def start(self) -> None:
        """Before the fleet starts: ask for what the cluster lacks (nothing when it fits)."""
        fit = min(actors_that_fit(self.config), self.wanted)
        missing = self.wanted - fit
        if missing <= 0:
            return
        self.waiting = True
        self._start = self._progress = self.clock()
        bundle = actor_bundle(self.config)
        if not self.autoscaler:
            self.reporter.print(
                f"the cluster holds {fit} of {self.wanted} actors ({shape(bundle)} each) and "
                "has no autoscaler: the rest start as nodes join")
            return
        if standing_request():
            self.reporter.print("warning: the autoscaler still holds an earlier request for "
                                "nodes (another run's, or a killed one's); this run's "
                                "replaces it")
        request_resources(bundles=[learner_bundle(self.config)] + [bundle] * self.wanted)
        self.requested = True
        self.reporter.print(
            f"waiting for {missing * bundle['CPU']:g} CPUs from the autoscaler: {fit} of "
            f"{self.wanted} actors ({shape(bundle)} each) fit the cluster now")

    def check(self, streaming: int, learner_up: bool) -> None:
        """Every few seconds, with the actors streaming now: report nodes that brought new
        actors; past `actors.scale_timeout_s` without one while the learner was up, give
        up (`FleetFailure`) or stop waiting. The time the learner is down does not count:
        no actor streams then."""
        if not self.waiting:
            return
        now = self.clock()
        if not learner_up:
            self._paused = True
            return
        if self._paused:  # the learner is (back) up: the actors get their time anew
            self._paused, self._progress = False, now
        if streaming > self.streaming:
            self.streaming, self._progress = streaming, now
            if streaming >= self.wanted:
                self.waiting = False
                self.reporter.print(f"fleet complete: {streaming} actors running, "
                                    f"{now - self._start:.0f} s after the request")
                return
            self.reporter.print(f"nodes arrived: {streaming} of {self.wanted} actors running")
        timeout = self.config.actors.scale_timeout_s
        if now - self._progress < timeout:
            return
        self.waiting = False
        running = max(streaming, self.streaming)
        if not self.autoscaler or (self.elastic and running > 0):
            self.reporter.print(
                f"warning: no new actor for {timeout:g} s (actors.scale_timeout_s): the fleet "
                f"runs with {running} of {self.wanted} actors; the rest start if nodes come")
            return
        hint = "" if self.elastic else "; lower actors.num_actors or use auto"
        raise FleetFailure(
            StopReason.NO_NODES,
            f"{running} of {self.wanted} actors running after {now - self._start:.0f} s: "
            f"the autoscaler brought no node for an actor ({shape(actor_bundle(self.config))})"
            f" in actors.scale_timeout_s={timeout:g} s. No node type offers that, or the "
            f"cluster is at its max_workers{hint}")

    def release(self) -> None:
        """Withdraw the request (the run is over: idle nodes may go)."""
        if self.requested:
            self.requested = False
            with contextlib.suppress(Exception):  # Ray is gone already: so is the request
                request_resources(bundles=[])
