"""Scaling: ask Ray's autoscaler for the nodes the fleet needs, and watch them come.

A fleet that needs more than the cluster has asks once for all of it, the learner and
every actor (`request_resources` replaces an earlier request rather than adding to it).
The actors that do not fit yet wait in Ray's queue and start as nodes arrive. When no new
actor starts for `actors.scale_timeout_s`, a fixed fleet ends the run (the nodes it needs
do not exist); an `auto` one runs with what it has, its request left standing. The request
is withdrawn at the end, so the autoscaler can let the nodes go.
"""

from __future__ import annotations

import contextlib
import time

import ray
from ray.autoscaler.sdk import request_resources

from qfleet.config import Config
from qfleet.driver.failures import FleetFailure
from qfleet.driver.placement import actor_bundle, actor_slots, learner_bundle
from qfleet.driver.record import StopReason
from qfleet.reporting import Reporter


class Scaling:
    def __init__(self, config: Config, reporter: Reporter, *, autoscaler: bool,
                 elastic: bool) -> None:
        """`autoscaler`: one watches the cluster (else the fleet waits for nodes that join
        by hand); `elastic`: an `auto` fleet, content with fewer actors than it asked for."""
        self.config, self.reporter = config, reporter
        self.autoscaler, self.elastic = autoscaler, elastic
        self.wanted = int(config.actors.num_actors)
        self.requested = False
        self.waiting = False
        self.running = 0
        self._start = self._progress = time.monotonic()

    def start(self) -> None:
        """Before the fleet starts: ask for what the cluster lacks (nothing when it fits)."""
        free = dict(ray.available_resources())
        learner = learner_bundle(self.config)
        for key, value in learner.items():
            free[key] = free.get(key, 0.0) - value
        bundle = actor_bundle(self.config)
        fit = min(actor_slots(free, bundle), self.wanted)
        missing = self.wanted - fit
        if missing <= 0:
            return
        self.waiting = True
        self._start = self._progress = time.monotonic()
        shape = _shape(bundle)
        if self.autoscaler:
            request_resources(bundles=[learner] + [bundle] * self.wanted)
            self.requested = True
            self.reporter.print(
                f"waiting for {missing * bundle['CPU']:g} CPUs from the autoscaler: {fit} of "
                f"{self.wanted} actors ({shape} each) fit the cluster now")
        else:
            self.reporter.print(
                f"the cluster holds {fit} of {self.wanted} actors ({shape} each) and has no "
                "autoscaler: the rest start as nodes join")

    def check(self, running: int) -> None:
        """Each few seconds, with the actors streaming now: report nodes that brought new
        actors; past `actors.scale_timeout_s` without one, give up (`FleetFailure`) or, for
        an `auto` fleet that runs at all, stop waiting."""
        if not self.waiting:
            return
        now = time.monotonic()
        if running > self.running:
            self.running, self._progress = running, now
            if running >= self.wanted:
                self.waiting = False
                self.reporter.print(f"fleet complete: {running} actors running, "
                                    f"{now - self._start:.0f} s after the request")
                return
            self.reporter.print(f"nodes arrived: {running} of {self.wanted} actors running")
        timeout = self.config.actors.scale_timeout_s
        if now - self._progress < timeout:
            return
        self.waiting = False
        source = "the autoscaler" if self.autoscaler else "a joining node"
        if self.elastic and running > 0:
            self.reporter.print(
                f"warning: no new actor for {timeout:g} s (actors.scale_timeout_s): the fleet "
                f"runs with {running} of {self.wanted} actors; the rest start if nodes come")
            return
        raise FleetFailure(
            StopReason.NO_NODES,
            f"{running} of {self.wanted} actors running after {now - self._start:.0f} s: "
            f"{source} brought no node for an actor ({_shape(actor_bundle(self.config))}) "
            f"in actors.scale_timeout_s={timeout:g} s. No node type offers that, or the "
            "cluster is at its max_workers; lower actors.num_actors or use auto")

    def release(self) -> None:
        """Withdraw the request (the run is over: idle nodes may go)."""
        if self.requested:
            self.requested = False
            with contextlib.suppress(Exception):  # Ray is gone already: so is the request
                request_resources(bundles=[])


def _shape(bundle: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in bundle.items())
