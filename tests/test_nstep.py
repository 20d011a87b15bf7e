"""The n-step adder: returns, discounts and bootstrap states, across episode ends."""

import numpy as np
import pytest

from qfleet.actors.nstep import NStepAdder, nstep_returns

G = 0.5


def step(adder, obs_val, reward, terminated=False, truncated=False, next_val=None, envs=1):
    obs = np.full((envs, 1), obs_val, dtype=np.float32)
    nxt = np.full((envs, 1), obs_val + 1 if next_val is None else next_val, dtype=np.float32)
    return adder.add(obs, np.full(envs, obs_val, dtype=np.int64),
                     np.full(envs, reward, dtype=np.float32), np.full(envs, terminated),
                     np.full(envs, truncated), nxt)


def test_nstep_returns():
    assert nstep_returns(np.array([1.0, 2.0, 4.0]), G).tolist() == pytest.approx(
        [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4])


def test_one_step_is_the_plain_transition():
    adder = NStepAdder(1, 1, G, (1,), np.dtype(np.float32))
    out = step(adder, 0, 1.0)
    assert out.obs[:, 0].tolist() == [0] and out.next_obs[:, 0].tolist() == [1]
    assert out.reward.tolist() == [1.0] and out.discount.tolist() == [G]


def test_three_step_in_the_middle_of_an_episode():
    adder = NStepAdder(1, 3, G, (1,), np.dtype(np.float32))
    assert step(adder, 0, 1.0) is None
    assert step(adder, 1, 2.0) is None
    out = step(adder, 2, 4.0)
    assert out.obs[:, 0].tolist() == [0]
    assert out.action.tolist() == [0]
    assert out.reward.tolist() == pytest.approx([1 + 0.5 * 2 + 0.25 * 4])
    assert out.discount.tolist() == pytest.approx([G**3])
    assert out.next_obs[:, 0].tolist() == [3]
    out = step(adder, 3, 8.0)
    assert out.obs[:, 0].tolist() == [1]
    assert out.reward.tolist() == pytest.approx([2 + 0.5 * 4 + 0.25 * 8])


def test_termination_flushes_pending_without_bootstrap():
    adder = NStepAdder(1, 3, G, (1,), np.dtype(np.float32))
    step(adder, 0, 1.0)
    out = step(adder, 1, 2.0, terminated=True, next_val=99)
    assert out.obs[:, 0].tolist() == [0, 1]
    assert out.reward.tolist() == pytest.approx([1 + 0.5 * 2, 2])
    assert out.discount.tolist() == [0.0, 0.0]
    assert out.next_obs[:, 0].tolist() == [99, 99]
    # The next episode starts clean: nothing from the old one leaks in.
    assert step(adder, 10, 1.0) is None
    assert step(adder, 11, 1.0) is None
    assert step(adder, 12, 1.0).obs[:, 0].tolist() == [10]


def test_truncation_flushes_pending_with_bootstrap_from_final_obs():
    adder = NStepAdder(1, 3, G, (1,), np.dtype(np.float32))
    step(adder, 0, 1.0)
    step(adder, 1, 1.0)
    out = step(adder, 2, 1.0, truncated=True, next_val=42)
    assert out.obs[:, 0].tolist() == [0, 1, 2]
    assert out.reward.tolist() == pytest.approx([1.75, 1.5, 1.0])
    assert out.discount.tolist() == pytest.approx([G**3, G**2, G])
    assert out.next_obs[:, 0].tolist() == [42, 42, 42]


def test_envs_of_a_vector_are_independent():
    adder = NStepAdder(2, 2, G, (1,), np.dtype(np.float32))
    obs = np.array([[0.0], [100.0]], dtype=np.float32)
    act = np.array([0, 1])
    out = adder.add(obs, act, np.array([1.0, 5.0], np.float32), np.array([False, True]),
                    np.array([False, False]), obs + 1)
    assert out.obs[:, 0].tolist() == [100.0] and out.discount.tolist() == [0.0]
    out = adder.add(obs + 1, act, np.array([2.0, 6.0], np.float32), np.array([False, False]),
                    np.array([False, False]), obs + 2)
    assert out.obs[:, 0].tolist() == [0.0]
    assert out.reward.tolist() == pytest.approx([1 + 0.5 * 2])


def _rows(out):
    if out is None:
        return []
    reward = np.round(out.reward, 5).tolist()  # matmuls of other shapes round differently
    return sorted(zip(out.obs[:, 0].tolist(), out.action.tolist(), reward,
                      out.discount.tolist(), out.next_obs[:, 0].tolist(), strict=True))


def test_envs_stepped_in_batches_give_the_lockstep_transitions():
    """A batched vector steps any subset of envs at a time: each env's transitions must be
    what lockstep gives, whatever the batches."""
    num_envs, steps, n = 5, 12, 3
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 1000, (steps + 1, num_envs)).astype(np.float32)
    rew = rng.normal(size=(steps, num_envs)).astype(np.float32)
    term = rng.random((steps, num_envs)) < 0.15
    trunc = ~term & (rng.random((steps, num_envs)) < 0.1)
    lockstep = NStepAdder(num_envs, n, G, (1,), np.dtype(np.float32))
    batched = NStepAdder(num_envs, n, G, (1,), np.dtype(np.float32))
    want, got = [], []
    for t in range(steps):
        want += _rows(lockstep.add(obs[t, :, None], obs[t].astype(np.int64), rew[t], term[t],
                                   trunc[t], obs[t + 1, :, None]))
    clock = np.zeros(num_envs, dtype=np.int64)
    while (clock < steps).any():  # random batches of the envs still running, any order
        live = np.flatnonzero(clock < steps)
        ids = rng.permutation(live)[:rng.integers(1, len(live) + 1)]
        t = clock[ids]
        got += _rows(batched.add(obs[t, ids, None], obs[t, ids].astype(np.int64), rew[t, ids],
                                 term[t, ids], trunc[t, ids], obs[t + 1, ids, None], envs=ids))
        clock[ids] += 1
    assert len(want) > 20
    assert sorted(got) == sorted(want)
