"""Replay storage and sampling: ring wrap-around, uniform batches, the no-replay stream."""

import numpy as np
import pytest
import torch

from qfleet.learner.replay import StreamBuffer, make_replay
from qfleet.transitions import Transitions


def items(start, n, shape=(2,)):
    ids = np.arange(start, start + n)
    obs = np.repeat(ids[:, None], np.prod(shape), axis=1).reshape(n, *shape).astype(np.uint8)
    return Transitions(obs, ids.astype(np.int64), ids.astype(np.float32),
                       np.full(n, 0.9, np.float32), obs + 1)


def test_ring_keeps_the_newest_and_wraps():
    rb = make_replay("uniform", 5, (2,), np.dtype(np.uint8), torch.device("cpu"))
    rb.add(items(0, 3))
    rb.add(items(3, 4))  # wraps: slots hold 5, 6, 2, 3, 4
    assert len(rb) == 5
    batch, _keys, weights = rb.sample(256)
    assert weights is None
    assert set(batch.action.tolist()) == {2, 3, 4, 5, 6}
    # Every column of a sampled row belongs to the same transition.
    assert torch.equal(batch.obs[:, 0].long(), batch.action)
    assert torch.equal(batch.next_obs[:, 0].long(), batch.action + 1)
    assert torch.equal(batch.reward.long(), batch.action)


def test_oversized_insert_keeps_only_what_fits():
    rb = make_replay("uniform", 4, (2,), np.dtype(np.uint8), torch.device("cpu"))
    rb.add(items(0, 10))
    batch, _, _ = rb.sample(200)
    assert set(batch.action.tolist()) == {6, 7, 8, 9}


def test_uniform_sampling_is_roughly_uniform():
    rb = make_replay("uniform", 10, (1,), np.dtype(np.uint8), torch.device("cpu"))
    rb.add(items(0, 10, (1,)))
    counts = np.bincount(rb.sample(20_000)[0].action.numpy(), minlength=10)
    assert counts.min() > 1_700 and counts.max() < 2_300


def test_stream_yields_each_transition_once_in_order():
    sb = StreamBuffer()
    sb.add(items(0, 3))
    sb.add(items(3, 2))
    seen = []
    while sb.can_sample(2):
        seen += sb.sample(2)[0].action.tolist()
    assert seen == [0, 1, 2, 3]
    assert len(sb) == 1
    assert sb.sample(1)[0].action.tolist() == [4]


def test_capacity_check_refuses_a_replay_that_cannot_fit():
    from qfleet.config import load_config
    from qfleet.envs import EnvSpec
    from qfleet.learner.learner import LearnerError, check_replay_fits

    spec = EnvSpec((4, 84, 84), np.dtype(np.uint8), 6, True)
    config = load_config(None, ["replay.capacity=100000000", "stop.env_steps=1"])
    with pytest.raises(LearnerError, match=r"replay\.capacity: 100000000 transitions need"):
        check_replay_fits(config, spec, torch.device("cpu"))


def test_replay_state_round_trip_keeps_contents_and_priorities():
    rb = make_replay("prioritized", 8, (2,), np.dtype(np.uint8), torch.device("cpu"))
    rb.add(items(0, 5))
    rb.update_priorities(torch.tensor([1, 3]), torch.tensor([5.0, 0.5]))
    other = make_replay("prioritized", 8, (2,), np.dtype(np.uint8), torch.device("cpu"))
    other.load_state_dict(rb.state_dict())
    assert len(other) == 5
    assert torch.equal(torch.cat(other.sampler.tree.levels), torch.cat(rb.sampler.tree.levels))
    assert torch.equal(other.storage.gather(torch.arange(5)).action, torch.arange(5))
    smaller = make_replay("uniform", 4, (2,), np.dtype(np.uint8), torch.device("cpu"))
    with pytest.raises(ValueError, match="capacity"):
        smaller.load_state_dict(rb.state_dict())


def test_nbytes_counts_every_column_and_the_sum_tree():
    cpu = torch.device("cpu")
    uniform = make_replay("uniform", 5, (2,), np.dtype(np.uint8), cpu)
    # obs and next_obs 5×2 bytes each, action 5×8, reward and discount 5×4 each
    assert uniform.nbytes() == 10 + 40 + 20 + 20 + 10
    prioritized = make_replay("prioritized", 5, (2,), np.dtype(np.uint8), cpu)
    # plus a float64 sum tree (64 leaves, one group, and its root) and the running max
    assert prioritized.nbytes() == uniform.nbytes() + 65 * 8 + 8


def test_frame_replay_state_round_trip_restores_stacks_priorities_and_the_ring():
    from qfleet.transitions import Frames

    cpu = torch.device("cpu")

    def replay(capacity=8):
        return make_replay("prioritized", capacity, (2, 2, 2), np.dtype(np.uint8), cpu,
                           frame_refs=True, num_streams=1, window=8)

    rb = replay()
    seq = np.arange(4)
    frames = Frames(np.repeat(seq[:, None, None], 4, 1).reshape(4, 2, 2).astype(np.uint8) + 1,
                    np.zeros(4, np.int64), seq)
    refs = np.array([[0, 1, 2], [0, 2, 2]])  # (stream, newest seq, depth)
    rb.add(Transitions(refs, np.array([0, 1]), np.array([1.0, 2.0], np.float32),
                       np.full(2, 0.9, np.float32), refs + np.array([0, 1, 0])), frames)
    rb.update_priorities(torch.tensor([0, 1]), torch.tensor([3.0, 0.1]))
    other = replay()
    other.load_state_dict(rb.state_dict())
    keys = torch.tensor([0, 1])
    for mine, theirs in zip(rb.storage.gather(keys), other.storage.gather(keys), strict=True):
        assert torch.equal(mine, theirs)
    assert other.storage.gather(keys).obs[1, :, 0, 0].tolist() == [2, 3]
    assert torch.equal(torch.cat(other.sampler.tree.levels), torch.cat(rb.sampler.tree.levels))
    assert other.storage.ring.writes == 4 and other.nbytes() == rb.nbytes()
    with pytest.raises(ValueError, match="shape"):
        replay(capacity=16).load_state_dict({**rb.state_dict(), "capacity": 16})
