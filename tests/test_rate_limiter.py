"""The replay-ratio rule driven with a real Actor and Learner, no Ray: the learner waits
when it is ahead of the ratio, the actors when they are."""

from qfleet.actors.actor import Actor
from qfleet.config import load_config
from qfleet.learner.learner import Learner
from qfleet.learner.rate_limiter import RateLimiter
from tests.test_actor_learner import make


def test_replay_ratio_holds_the_learner_back():
    config, spec = make(["actors.envs_per_actor=2", "replay.min_size=10",
                         "learner.batch_size=10", "learner.replay_ratio=1"])
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    limiter = RateLimiter(config)
    learner.add(actor.collect(25))  # about 50 transitions
    while limiter.can_update(learner):
        learner.step(learner.sample())
    assert learner.updates * 10 <= learner.transitions < (learner.updates + 1) * 10


def test_barebone_learns_each_transition_once():
    config, spec = make(["env.id=LunarLander-v3", "replay.kind=none", "learner.batch_size=1",
                         "learner.target_update=none", "actors.envs_per_actor=1"])
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    limiter = RateLimiter(config)
    assert learner.target is learner.online
    chunk = actor.collect(20)
    learner.add(chunk)
    while limiter.can_update(learner):
        learner.step(learner.sample())
    assert learner.updates == len(chunk.transitions) == 20
    assert limiter.wants_data(learner)


def test_actors_are_throttled_to_the_replay_ratio():
    config, spec = make(["actors.envs_per_actor=2", "replay.min_size=20",
                         "learner.batch_size=10", "learner.replay_ratio=2"])
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    limiter = RateLimiter(config)
    assert limiter.can_insert(learner, 20)  # warm-up is never throttled
    while limiter.can_insert(learner, 4):
        learner.add(actor.collect(2))
    # Actors must wait now; each update (10 samples at ratio 2) makes room for 5 more.
    before = learner.transitions
    assert not limiter.can_insert(learner, 4)
    for _ in range(20):
        if limiter.can_update(learner):
            learner.step(learner.sample())
    assert limiter.can_insert(learner, 4)
    assert learner.transitions == before
    off = load_config(None, ["stop.env_steps=1", "learner.replay_ratio=2",
                             "learner.throttle_actors=false"])
    assert RateLimiter(off).can_insert(Learner(off, spec), 10**9)


def test_a_resumed_learner_refills_its_replay_before_throttling():
    config, spec = make(["replay.min_size=40", "learner.batch_size=10",
                         "learner.replay_ratio=1"])
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    limiter = RateLimiter(config)
    while limiter.can_insert(learner, 16):
        learner.add(actor.collect(2))
    state = learner.state_dict()
    resumed = Learner(config, spec)
    resumed.load_state_dict(state)  # counters back, replay empty
    assert limiter.can_insert(resumed, 16)


def test_a_resumed_learner_with_its_replay_admits_a_chunk_larger_than_two_batches():
    # At the ratio's edge the learner waits for data: the actor's next chunk (4 x 8 = 32
    # transitions, more than two batches of 10) must get in, or both wait for ever.
    config, spec = make(["replay.min_size=40", "learner.batch_size=10", "learner.replay_ratio=1",
                         "actors.envs_per_actor=4", "actors.chunk_steps=8"])
    actor, learner = Actor(config, spec, 0, 1), Learner(config, spec)
    limiter = RateLimiter(config)
    while len(learner.replay) < 200:
        learner.add(actor.collect(8))
    while limiter.can_update(learner):
        learner.step(learner.sample())
    state = {**learner.state_dict(), "replay": learner.replay_state()}
    resumed = Learner(config, spec)
    resumed.load_state_dict(state)
    assert not limiter.can_update(resumed)
    assert limiter.can_insert(resumed, len(actor.collect(8).transitions))
