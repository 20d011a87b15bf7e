"""Compact Atari storage: stacks rebuilt from frames stored once equal the env's stacks."""

import numpy as np
import torch

from qfleet.actors.frames import FrameStreams
from qfleet.actors.nstep import NStepAdder
from qfleet.config import EnvConfig
from qfleet.envs import make_vec_env
from qfleet.learner.replay import DenseStorage, FrameStorage, replay_bytes_per_item
from qfleet.transitions import Transitions


def test_frame_storage_rebuilds_exactly_the_stacks_the_env_produced():
    # Short episodes so that resets, zero-padded first stacks and truncation all happen.
    envs = make_vec_env(EnvConfig(id="ALE/Pong-v5", max_episode_steps=12), 3, seed=0)
    obs = envs.reset(seed=0)
    streams = FrameStreams(first_stream=3, num_envs=3, stack=4)
    refs = streams.reset(obs)
    dense_adder = NStepAdder(3, 3, 0.9, obs.shape[1:], obs.dtype)
    ref_adder = NStepAdder(3, 3, 0.9, (3,), np.dtype(np.int64))
    cpu = torch.device("cpu")
    dense = DenseStorage(400, obs.shape[1:], obs.dtype, cpu)
    compact = FrameStorage(400, (84, 84), 4, num_streams=6, window=32, device=cpu)
    rng = np.random.default_rng(0)
    written = 0
    for _ in range(6):
        parts_d, parts_r = [], []
        for _ in range(8):
            actions = rng.integers(0, envs.num_actions, 3)
            step = envs.step(actions)
            done = step.terminated | step.truncated
            next_refs, new_refs = streams.step(step.obs, step.next_obs, done)
            d = dense_adder.add(obs, actions, step.rewards, step.terminated, step.truncated,
                                step.next_obs)
            r = ref_adder.add(refs, actions, step.rewards, step.terminated, step.truncated,
                              next_refs)
            assert (d is None) == (r is None)
            if d is not None:
                parts_d.append(d)
                parts_r.append(r)
            obs, refs = step.obs, new_refs
        d, r = Transitions.concat(parts_d), Transitions.concat(parts_r)
        slots = torch.arange(written, written + len(d))
        dense.write(slots, d, None)
        compact.write(slots, r, streams.drain())
        written += len(d)
    slots = torch.arange(written)
    assert compact.valid(slots).all()
    a, b = dense.gather(slots), compact.gather(slots)
    assert torch.equal(a.obs, b.obs)
    assert torch.equal(a.next_obs, b.next_obs)
    assert torch.equal(a.action, b.action) and torch.equal(a.discount, b.discount)
    assert (b.obs[:, 0] == 0).all(dim=(1, 2)).any()  # some zero-padded first stacks
    assert (b.discount > 0.73).any()  # truncations flushed with shorter bootstraps
    envs.close()


def test_recycled_frames_are_detected():
    cpu = torch.device("cpu")
    fs = FrameStorage(4, (2, 2), 2, num_streams=1, window=8, device=cpu)
    assert fs.ring.size > 4
    from qfleet.transitions import Frames

    def frames(first, k):
        seq = np.arange(first, first + k)
        return Frames(np.repeat(seq[:, None, None], 4, 1).reshape(k, 2, 2).astype(np.uint8),
                      np.zeros(k, np.int64), seq)

    refs = np.array([[0, 1, 2]])
    t = Transitions(refs, np.zeros(1, np.int64), np.zeros(1, np.float32),
                    np.zeros(1, np.float32), refs + np.array([0, 1, 0]))
    fs.write(torch.tensor([0]), t, frames(0, 3))
    assert fs.valid(torch.tensor([0])).all()
    assert fs.gather(torch.tensor([0])).obs[0, :, 0, 0].tolist() == [0, 1]
    empty = Transitions(np.zeros((0, 3), np.int64), np.zeros(0, np.int64),
                        np.zeros(0, np.float32), np.zeros(0, np.float32),
                        np.zeros((0, 3), np.int64))
    fs.write(torch.tensor([], dtype=torch.long), empty, frames(3, fs.ring.size))
    assert not fs.valid(torch.tensor([0])).any()


def test_atari_transition_fits_in_8_kib():
    assert replay_bytes_per_item((4, 84, 84), np.dtype(np.uint8), True, True) <= 8192


def _twin_actors(common: list[str], first: list[str], second: list[str], seed: int):
    """Two Breakout actors alike but for `first`/`second`: same seeds, same float32
    network (it picks the first actions, sent at start)."""
    from qfleet.actors.actor import Actor
    from qfleet.config import load_config
    from qfleet.envs import env_spec

    actors = []
    for extra in (first, second):
        cfg = load_config(None, ["env.id=ALE/Breakout-v5", "stop.env_steps=1",
                                 "actors.envs_per_actor=4", "learner.n_step=3",
                                 "actors.inference_dtype=float32", *common, *extra])
        torch.manual_seed(0)
        actors.append(Actor(cfg, env_spec(cfg.env), 0, seed=seed))
    return actors


def test_batched_atari_actor_sends_frames_that_rebuild_its_observations():
    from qfleet.envs import env_spec
    from qfleet.learner.replay import make_replay

    dense, compact = _twin_actors(["env.max_episode_steps=30", "actors.env_groups=2"],
                                  ["replay.kind=none"], ["replay.kind=uniform"], seed=5)
    spec = env_spec(compact.config.env)
    replay = make_replay("uniform", 1000, spec.obs_shape, spec.obs_dtype, torch.device("cpu"),
                         frame_refs=True, num_streams=4, window=64)
    total = 0
    for _ in range(5):
        d, c = dense.collect(8), compact.collect(8)
        assert c.frames is not None and d.frames is None
        assert len(d.transitions) == len(c.transitions)
        replay.add(c.transitions, c.frames)
        got = replay.storage.gather(torch.arange(total, total + len(c.transitions)))
        assert torch.equal(got.obs, torch.from_numpy(d.transitions.obs))
        assert torch.equal(got.next_obs, torch.from_numpy(d.transitions.next_obs))
        total += len(c.transitions)
    dense.close()
    compact.close()


def _by_stream(chunks) -> dict[int, list[tuple]]:
    """Each env's transitions, in the order the adder emitted them."""
    out: dict[int, list[tuple]] = {}
    for c in chunks:
        t = c.transitions
        for i in range(len(t)):
            row = (*t.obs[i].tolist(), int(t.action[i]), round(float(t.reward[i]), 5),
                   float(t.discount[i]), *t.next_obs[i].tolist())
            out.setdefault(int(t.obs[i, 0]), []).append(row)
    return out


def test_batched_and_lockstep_atari_actors_make_the_same_transitions():
    """Greedy actors on the same seeds: the batched vector must give every env the same
    transitions, frame references included, as stepping all envs in lockstep."""
    greedy = ["env.max_episode_steps=20", "replay.kind=uniform", "actors.epsilon=linear",
              "actors.epsilon_start=0", "actors.epsilon_end=0"]
    lock, batched = _twin_actors(greedy, ["actors.env_groups=1"], ["actors.env_groups=2"],
                                 seed=3)
    assert batched.envs.batch_size == 2 and lock.envs.batch_size == 4
    want = _by_stream([lock.collect(10) for _ in range(4)])
    got = _by_stream([batched.collect(10) for _ in range(4)])
    lock.close()
    batched.close()
    assert sorted(want) == sorted(got) == [0, 1, 2, 3]
    for stream, rows in want.items():
        common_len = min(len(rows), len(got[stream]))
        assert common_len >= 20
        assert rows[:common_len] == got[stream][:common_len]
