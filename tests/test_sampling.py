"""The sum tree and the prioritized sampler, against exact expectations."""

import numpy as np
import pytest
import torch

from qfleet.learner.replay import make_replay
from qfleet.learner.sampling import PrioritizedSampler, SumTree
from qfleet.transitions import Transitions


def test_sum_tree_sums_and_finds_prefix_mass():
    tree = SumTree(5)
    tree.set(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([1.0, 2.0, 0.0, 3.0, 4.0]))
    assert tree.total.item() == pytest.approx(10.0)
    found = tree.find(torch.tensor([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99]))
    assert found.tolist() == [0, 0, 1, 1, 3, 3, 4, 4]  # leaf 2 has no mass: never found
    tree.set(torch.tensor([4, 4]), torch.tensor([1.0, 1.0]))  # duplicates in one update
    assert tree.total.item() == pytest.approx(7.0)


def test_a_three_level_tree_finds_what_a_cumulative_sum_finds():
    rng = np.random.default_rng(0)
    n = 64 * 64 + 100  # leaves, two inner levels and the root
    p = rng.random(n) * (rng.random(n) > 0.3)  # some leaves empty
    tree = SumTree(n)
    assert len(tree.levels) == 4
    tree.set(torch.arange(n), torch.from_numpy(p))
    tree.set(torch.tensor([7, 7, 4100]), torch.tensor([2.5, 2.5, 0.0]))
    p[[7, 4100]] = [2.5, 0.0]
    assert tree.total.item() == pytest.approx(p.sum())
    mass = rng.random(5000) * p.sum()
    expected = np.searchsorted(np.cumsum(p), mass, side="right")
    assert np.array_equal(tree.find(torch.from_numpy(mass)).numpy(), expected)
    # At or past the total (rounding), the walk ends on the last leaf with mass.
    last = int(np.flatnonzero(p)[-1])
    assert tree.find(torch.tensor([p.sum(), p.sum() * 1.01])).tolist() == [last, last]


def test_a_saved_tree_loads_back_whole():
    tree = SumTree(5)
    tree.set(torch.arange(5), torch.tensor([1.0, 2.0, 0.0, 3.0, 4.0], dtype=torch.float64))
    assert tree.total.item() == 10.0
    assert tree.find(torch.tensor([2.5])).tolist() == [1]
    again = SumTree(5)
    again.load_state_dict(tree.state_dict())
    assert torch.equal(torch.cat(again.levels), torch.cat(tree.levels))


def test_prioritized_sampling_follows_p_to_the_alpha():
    s = PrioritizedSampler(4, alpha=0.5, beta0=1.0)
    slots = torch.arange(4)
    s.on_insert(slots)
    s.update(slots, torch.tensor([1.0, 4.0, 9.0, 16.0]) - 1e-6)  # p^α = 1, 2, 3, 4
    counts = torch.zeros(4)
    for _ in range(200):
        keys, _ = s.sample(100, 4)
        counts += torch.bincount(keys, minlength=4)
    assert (counts / counts.sum()).tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.01)


def test_importance_weights_undo_the_bias():
    s = PrioritizedSampler(2, alpha=1.0, beta0=1.0)
    s.on_insert(torch.arange(2))
    s.update(torch.arange(2), torch.tensor([1.0, 3.0]))
    keys, w = s.sample(64, 2)
    # P = (1/4, 3/4): weights ∝ 1/(N·P) = (2, 2/3), normalized by the max -> (1, 1/3).
    expected = torch.where(keys == 0, 1.0, 1.0 / 3.0)
    assert torch.allclose(w, expected, atol=1e-4)


def test_beta_anneals_to_one_and_new_items_get_max_priority():
    s = PrioritizedSampler(8, beta0=0.4, beta_steps=100)
    s.step(50)
    assert s.beta == pytest.approx(0.7)
    s.step(1000)
    assert s.beta == 1.0
    s.on_insert(torch.arange(2))
    s.update(torch.arange(2), torch.tensor([5.0, 0.1]))
    s.on_insert(torch.tensor([2]))
    assert s.tree.leaves(torch.tensor([2])).item() == pytest.approx((5.0 + 1e-6) ** 0.6)


def test_prioritized_replay_end_to_end_with_priority_updates():
    rb = make_replay("prioritized", 16, (1,), np.dtype(np.float32), torch.device("cpu"))
    n = 16
    obs = np.arange(n, dtype=np.float32)[:, None]
    rb.add(Transitions(obs, np.arange(n), np.zeros(n, np.float32), np.ones(n, np.float32), obs))
    batch, keys, weights = rb.sample(8)
    assert weights is not None and weights.shape == (8,)
    assert torch.equal(batch.action, keys)
    rb.update_priorities(torch.arange(16), torch.where(torch.arange(16) == 5, 100.0, 0.0))
    batch, keys, _ = rb.sample(32)
    assert (keys == 5).float().mean() > 0.9
