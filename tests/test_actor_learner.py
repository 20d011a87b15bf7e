"""Actor and Learner driven in-process, without Ray: the spine of the data flow."""

import numpy as np
import torch

from qfleet.actors.actor import Actor
from qfleet.config import load_config
from qfleet.envs import env_spec
from qfleet.learner.learner import Learner
from qfleet.learner.rate_limiter import RateLimiter
from qfleet.learner.tally import StatsWindow


def make(overrides):
    config = load_config(None, ["stop.env_steps=1000", *overrides])
    return config, env_spec(config.env)


def test_actor_chunks_feed_the_learner_and_weights_flow_back():
    config, spec = make(["actors.envs_per_actor=4", "learner.n_step=3", "replay.min_size=64",
                         "learner.batch_size=32", "learner.target_update_every=5"])
    actor = Actor(config, spec, actor_index=0, seed=1)
    learner = Learner(config, spec)
    chunk = actor.collect(40)
    assert chunk.env_steps == 160
    # 3-step transitions: each env completes one per step after the first 2, plus flushes.
    assert 4 * 38 <= len(chunk.transitions) <= 160
    assert chunk.transitions.obs.dtype == np.float32
    allowed = np.array([0.0, 0.99, 0.99**2, 0.99**3], dtype=np.float32)
    assert np.isin(chunk.transitions.discount, allowed).all()
    window = StatsWindow(learner.device)
    window.chunk(chunk, learner.version)
    learner.add(chunk)
    assert RateLimiter(config).can_update(learner)
    before = {k: v.clone() for k, v in learner.online.state_dict().items()}
    for _ in range(10):
        window.update(learner.step(learner.sample()))
    assert learner.updates == 10
    version, weights = learner.get_weights()
    assert version == 1
    assert any(not torch.equal(before[k], weights[k]) for k in weights)
    actor.set_weights(version, weights)
    assert actor.collect(1).version == 1
    stats = window.pop(learner)
    assert stats.counters.updates == 10 and np.isfinite(stats.loss)
    assert stats.policy_lag == 0.0 and stats.epsilon == chunk.epsilon
    assert window.pop(learner).loss is None  # the means start again


def test_learner_state_round_trip():
    config, spec = make(["replay.min_size=32"])
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    learner.add(actor.collect(10))
    for _ in range(3):
        learner.step(learner.sample())
    state = learner.state_dict()
    other = Learner(config, spec)
    other.load_state_dict(state)
    assert other.updates == 3 and other.env_steps == learner.env_steps
    for k, v in learner.online.state_dict().items():
        assert torch.equal(v, other.online.state_dict()[k])


def test_a_loaded_optimizer_takes_this_configs_learning_rate():
    """A resume with learner.lr=..., or a PBT trial given a perturbed lr, learns at that lr
    (the optimizer's saved state carries the old one)."""
    config, spec = make(["replay.min_size=32", "learner.lr=1e-3"])
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    learner.add(actor.collect(10))
    learner.step(learner.sample())
    changed, _ = make(["replay.min_size=32", "learner.lr=5e-4", "learner.adam_eps=1e-5"])
    other = Learner(changed, spec)
    other.load_state_dict(learner.state_dict())
    assert [(g["lr"], g["eps"]) for g in other.optimizer.param_groups] == [(5e-4, 1e-5)]
    assert other.optimizer.state  # the moments came along


def test_a_nonfinite_loss_skips_the_update():
    config, spec = make(["replay.min_size=32"])
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    learner.add(actor.collect(10))
    before = {k: v.clone() for k, v in learner.online.state_dict().items()}
    learner.fault_hook = lambda loss: loss * float("nan")
    learner.step(learner.sample())
    assert learner.updates == 0 and learner.nonfinite_skipped == 1
    assert all(torch.equal(before[k], v) for k, v in learner.online.state_dict().items())
    learner.fault_hook = None
    learner.step(learner.sample())
    assert learner.updates == 1


def test_a_bfloat16_acting_copy_tracks_the_float32_network():
    """The actors may act with a bfloat16 copy: it loads the learner's float32 weights and
    ranks actions like them; the learner's network stays float32."""
    from qfleet.networks import build_q_network, faster_dtype

    config, spec = make(["env.id=ALE/Pong-v5", "actors.envs_per_actor=4",
                         "actors.inference_dtype=bfloat16"])
    actor = Actor(config, spec, actor_index=0, seed=1)
    assert actor.net.compute_dtype == torch.bfloat16
    assert {p.dtype for p in actor.net.parameters()} == {torch.bfloat16}
    torch.manual_seed(0)
    full = build_q_network(config, spec).eval()
    actor.set_weights(1, full.state_dict())
    frames = np.random.default_rng(0).integers(0, 255, (16, *spec.obs_shape), dtype=np.uint8)
    x = torch.from_numpy(frames)
    with torch.inference_mode():
        q32, q16 = full(x), actor.net(x).float()
    assert torch.allclose(q16, q32, atol=0.05 * q32.abs().max().item())
    assert faster_dtype(full, x) in (torch.float32, torch.bfloat16)
    chunk = actor.collect(8)
    assert chunk.env_steps == 32 and len(chunk.transitions) > 0
    actor.close()
