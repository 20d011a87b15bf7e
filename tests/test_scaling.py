"""Scaling and sizing, in-process: what the fleet asks the autoscaler for, when it gives up,
and how many actors a cluster holds. The cluster's view (`ray.nodes`,
`ray.available_resources`) and the autoscaler request are stand-ins here; the real ones
run in tests/test_autoscaling.py and the docs' autoscaling block (tests/test_docs_blocks.py)."""

from __future__ import annotations

import pytest
import ray

from qfleet.config import load_config
from qfleet.driver import placement, scaling
from qfleet.driver.failures import FleetFailure
from qfleet.driver.placement import actors_that_fit, bundles_in
from qfleet.driver.scaling import Scaling
from qfleet.runs.record import StopReason


class Printed:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, line: str) -> None:
        self.lines.append(line)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cluster(monkeypatch):
    """A cluster of the given nodes, all free; the requests made of its autoscaler."""
    requests: list[list[dict]] = []
    nodes: list[dict[str, float]] = []
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": n} for n in nodes])
    monkeypatch.setattr(ray, "available_resources", lambda: {
        k: sum(n.get(k, 0.0) for n in nodes) for n in nodes for k in n})
    monkeypatch.setattr(ray, "cluster_resources", ray.available_resources)
    monkeypatch.setattr(scaling, "request_resources", lambda bundles: requests.append(bundles))
    monkeypatch.setattr(scaling, "standing_request", lambda: [])
    return nodes, requests


def config(*overrides: str):
    return load_config(None, ["stop.env_steps=1000", "learner.device=cpu", *overrides])


def test_bundles_count_whole_bundles_only():
    assert bundles_in({"CPU": 3.0}, {"CPU": 1.0}) == 3
    assert bundles_in({"CPU": 0.3}, {"CPU": 0.1}) == 3  # not 2, as float // says
    assert bundles_in({"CPU": 8.0, "qfleet_actor": 2.0}, {"CPU": 1.0, "qfleet_actor": 1.0}) == 2
    assert bundles_in({"CPU": -1.0}, {"CPU": 1.0}) == 0


def test_actors_fit_node_by_node_beside_the_learner(cluster):
    nodes, _ = cluster
    nodes += [{"CPU": 1.0, "qfleet_learner": 1.0}, {"CPU": 3.0}, {"CPU": 3.0}]
    head = 'learner.resources={"qfleet_learner": 1}'
    # 6 CPUs free beside the learner would hold 3 actors of 2 CPUs, but a node of 3 holds 1.
    assert actors_that_fit(config("actors.num_cpus=2", head)) == 2
    assert actors_that_fit(config("actors.num_cpus=1", head)) == 6
    assert actors_that_fit(config("actors.num_cpus=1")) == 6  # the learner on the first


def test_a_fleet_that_fits_asks_for_nothing_and_never_waits(cluster):
    nodes, requests = cluster
    nodes.append({"CPU": 8.0})
    out = Printed()
    s = Scaling(config("actors.num_actors=4"), out, autoscaler=True, elastic=False)
    s.start()
    assert not requests and not s.waiting and not out.lines


def test_a_fleet_asks_for_the_learner_and_every_actor_and_releases_at_the_end(cluster):
    nodes, requests = cluster
    nodes.append({"CPU": 2.0, "qfleet_learner": 1.0})
    c = config("actors.num_actors=3", 'actors.resources={"qfleet_actor": 1}',
               'learner.resources={"qfleet_learner": 1}')
    out, clock = Printed(), Clock()
    s = Scaling(c, out, autoscaler=True, elastic=False, clock=clock)
    s.start()
    assert requests == [[{"CPU": 1.0, "qfleet_learner": 1.0}]
                        + [{"CPU": 1.0, "qfleet_actor": 1.0}] * 3]
    assert out.lines[-1].startswith("waiting for 3 CPUs from the autoscaler: 0 of 3 actors")
    for streaming in (1, 3):
        clock.now += 5
        s.check(streaming, learner_up=True)
    assert out.lines[-2:] == ["nodes arrived: 1 of 3 actors running",
                              "fleet complete: 3 actors running, 10 s after the request"]
    s.release()
    s.release()  # once is enough
    assert requests[1:] == [[]]


def test_a_fixed_fleet_without_new_nodes_ends_the_run(cluster):
    cluster[0].append({"CPU": 1.0})
    out, clock = Printed(), Clock()
    s = Scaling(config("actors.num_actors=2", "actors.scale_timeout_s=100"), out,
                autoscaler=True, elastic=False, clock=clock)
    s.start()
    s.check(0, learner_up=True)
    clock.now = 99
    s.check(0, learner_up=True)
    clock.now = 101
    with pytest.raises(FleetFailure) as failure:
        s.check(0, learner_up=True)
    assert failure.value.reason is StopReason.NO_NODES
    assert "0 of 2 actors running" in str(failure.value)
    assert "actors.scale_timeout_s=100" in str(failure.value)


def test_the_time_the_learner_is_down_does_not_count(cluster):
    """A learner restart resets the streaming count to 0; neither that nor the restart's
    duration may end a fleet that was growing."""
    cluster[0].append({"CPU": 1.0})
    out, clock = Printed(), Clock()
    s = Scaling(config("actors.num_actors=3", "actors.scale_timeout_s=100"), out,
                autoscaler=True, elastic=True, clock=clock)
    s.start()
    s.check(0, learner_up=False)  # the first learner starts slowly
    clock.now = 500
    s.check(1, learner_up=True)
    clock.now = 550
    s.check(0, learner_up=False)  # it was lost: no actor streams while it restarts
    clock.now = 900
    s.check(0, learner_up=True)  # back; its actors have not sent yet
    clock.now = 990
    s.check(0, learner_up=True)
    assert s.waiting
    clock.now = 1001
    s.check(0, learner_up=True)  # an auto fleet that ran with 1 actor goes on with it
    assert not s.waiting
    assert "runs with 1 of 3 actors" in out.lines[-1]


def test_without_an_autoscaler_the_fleet_waits_for_nodes_and_then_goes_on(cluster):
    _, requests = cluster
    cluster[0].append({"CPU": 2.0})
    out, clock = Printed(), Clock()
    s = Scaling(config("actors.num_actors=4", "actors.scale_timeout_s=10"), out,
                autoscaler=False, elastic=False, clock=clock)
    s.start()
    assert not requests and "has no autoscaler" in out.lines[-1]
    s.check(1, learner_up=True)
    clock.now = 20
    s.check(1, learner_up=True)  # a fixed fleet, but nodes may still join by hand
    assert "runs with 1 of 4 actors" in out.lines[-1]


def test_auto_on_an_autoscaling_cluster_asks_for_max_actors_and_needs_it(cluster):
    cluster[0].append({"CPU": 2.0})
    resolved = placement.resolve_fleet(config("actors.num_actors=auto", "actors.max_actors=7"),
                                       autoscaling=True)
    assert resolved.actors.num_actors == 7
    with pytest.raises(placement.ConfigError, match=r"set actors\.max_actors"):
        placement.resolve_fleet(config("actors.num_actors=auto"), autoscaling=True)
    resolved = placement.resolve_fleet(config("actors.num_actors=auto"), autoscaling=False)
    assert resolved.actors.num_actors == 1 and resolved.actors.max_actors == 4
