import numpy as np
import pytest

from qfleet.actors.epsilon import apex_epsilon, fleet_epsilons, linear_epsilon
from qfleet.config import ActorsConfig


def test_apex_schedule_endpoints_and_formula():
    eps = apex_epsilon(np.arange(5), 5, 0.4, 7.0)
    assert eps[0] == pytest.approx(0.4)
    assert eps[-1] == pytest.approx(0.4**8)
    assert eps[2] == pytest.approx(0.4 ** (1 + 7 * 2 / 4))
    assert np.all(np.diff(eps) < 0)
    assert apex_epsilon(0, 1).tolist() == pytest.approx(0.4)


def test_fleet_epsilons_number_envs_over_the_whole_fleet():
    cfg = ActorsConfig(num_actors=2, envs_per_actor=3)
    everything = apex_epsilon(np.arange(6), 6)
    assert fleet_epsilons(cfg, 1).tolist() == pytest.approx(everything[3:].tolist())


def test_linear_decay():
    assert linear_epsilon(0, 1.0, 0.1, 100) == pytest.approx(1.0)
    assert linear_epsilon(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert linear_epsilon(10**6, 1.0, 0.1, 100) == pytest.approx(0.1)
    cfg = ActorsConfig(epsilon="linear", envs_per_actor=2, epsilon_decay_steps=10)
    assert fleet_epsilons(cfg, 0, 5).tolist() == pytest.approx([0.525, 0.525])
