"""`LearnerWorker`, the learner's Ray edge, driven in-process on a real local Ray: its
asyncio methods and its update thread as Ray runs them (one event loop, one thread)."""

import asyncio
import threading
import time

import pytest

from qfleet.actors.actor import Actor
from qfleet.config import load_config
from qfleet.envs import env_spec
from qfleet.learner.worker import LearnerWorker
from tests.conftest import own_ray

pytestmark = pytest.mark.slow  # a real local Ray


@pytest.fixture(scope="module")
def local_ray():
    with own_ray(num_cpus=2):
        yield


def test_a_checkpoint_copying_the_replay_holds_up_neither_add_nor_the_event_loop(local_ray):
    """While `state(include_replay=True)` holds the learner's lock (a big replay being
    copied), an actor's `add` is still admitted and answered: the copy runs off the event
    loop. The state read and the stats pull still see one consistent learner."""
    config = load_config(None, ["stop.env_steps=1000", "actors.envs_per_actor=4",
                                "replay.min_size=100000", "replay.capacity=100000"])
    spec = env_spec(config.env)
    worker = LearnerWorker(config.to_dict(), spec)
    actor = Actor(config, spec, 0, seed=1)
    chunks = [actor.collect(16) for _ in range(3)]
    actor.close()
    copying = threading.Event()
    copy_s = 1.5
    real_replay_state = worker.learner.replay_state

    def slow_replay_state():
        copying.set()
        time.sleep(copy_s)  # a GiB-sized replay on its way to the host
        return real_replay_state()

    worker.learner.replay_state = slow_replay_state

    async def main() -> tuple[float, float, int]:
        await worker.add(chunks[0])
        start = time.perf_counter()
        checkpoint = asyncio.create_task(worker.state(include_replay=True))
        while not copying.is_set():
            await asyncio.sleep(0.01)
        pull = asyncio.create_task(worker.stats())
        reply = await asyncio.wait_for(worker.add(chunks[1]), timeout=copy_s / 2)
        added = time.perf_counter() - start
        assert reply.stop is False and reply.version >= 1
        state = await checkpoint
        assert state["replay"] is not None and "network" in state
        stats = await pull  # it waited for the lock, not the event loop
        return added, time.perf_counter() - start, stats.counters.transitions

    try:
        added_s, checkpoint_s, transitions = asyncio.run(main())
    finally:
        worker.learner.replay_state = real_replay_state
        asyncio.run(worker.stop())
    assert added_s < copy_s / 2 and checkpoint_s >= copy_s
    assert transitions >= len(chunks[0].transitions)
