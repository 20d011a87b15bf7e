import numpy as np
import pytest

from qfleet.actors.epsilon import apex_epsilon, fleet_epsilons, linear_epsilon, spread_rank
from qfleet.config import ActorsConfig


def test_apex_schedule_endpoints_and_formula():
    eps = apex_epsilon(np.arange(5), 5, 0.4, 7.0)
    assert eps[0] == pytest.approx(0.4)
    assert eps[-1] == pytest.approx(0.4**8)
    assert eps[2] == pytest.approx(0.4 ** (1 + 7 * 2 / 4))
    assert np.all(np.diff(eps) < 0)
    assert apex_epsilon(0, 1).tolist() == pytest.approx(0.4)


def test_fleet_epsilons_deal_the_whole_fleets_schedule_across_actors():
    cfg = ActorsConfig(num_actors=2, envs_per_actor=3)
    everything = apex_epsilon(np.arange(6), 6)
    assert fleet_epsilons(cfg, 0).tolist() == pytest.approx(everything[0::2].tolist())
    assert fleet_epsilons(cfg, 1).tolist() == pytest.approx(everything[1::2].tolist())
    both = np.concatenate([fleet_epsilons(cfg, 0), fleet_epsilons(cfg, 1)])
    assert sorted(both.tolist()) == pytest.approx(sorted(everything.tolist()))


def test_an_elastic_fleets_schedule_spans_its_largest_size():
    """Actors added as nodes join (indices past the starting size) stay on the schedule,
    and the starting actors alone already reach both of its ends."""
    cfg = ActorsConfig(num_actors=2, max_actors=8, envs_per_actor=4)
    everything = apex_epsilon(np.arange(32), 32)
    assert [spread_rank(a, 8) for a in range(8)] == [0, 4, 2, 6, 1, 5, 3, 7]
    grown = fleet_epsilons(cfg, 7)
    assert grown.tolist() == pytest.approx(everything[7::8].tolist())
    assert grown.min() >= 0.4**8 - 1e-12 and grown.max() <= 0.4
    first = np.concatenate([fleet_epsilons(cfg, a) for a in range(2)])
    assert first.max() == pytest.approx(0.4)
    assert first.min() < 0.4**6  # the greedy end too, not only the exploring one
    every = np.concatenate([fleet_epsilons(cfg, a) for a in range(8)])
    assert sorted(every.tolist()) == pytest.approx(sorted(everything.tolist()))
    # One env per actor: the first two of eight actors still take both halves.
    single = ActorsConfig(num_actors=2, max_actors=8, envs_per_actor=1)
    two = [fleet_epsilons(single, a)[0] for a in range(2)]
    assert two == pytest.approx([0.4, 0.4 ** (1 + 7 * 4 / 7)])


def test_linear_decay():
    assert linear_epsilon(0, 1.0, 0.1, 100) == pytest.approx(1.0)
    assert linear_epsilon(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert linear_epsilon(10**6, 1.0, 0.1, 100) == pytest.approx(0.1)
    cfg = ActorsConfig(epsilon="linear", envs_per_actor=2, epsilon_decay_steps=10)
    assert fleet_epsilons(cfg, 0, 5).tolist() == pytest.approx([0.525, 0.525])
