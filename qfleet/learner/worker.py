"""The learner's Ray edge: `LearnerWorker` runs the plain `Learner`'s update loop in a
thread and serves actors' chunks and the driver's stats on its asyncio loop.

Data flow (docs/ARCHITECTURE.md): actors push chunks to `LearnerWorker.add`, whose reply
carries the newest weight version and its object ref; weights are `ray.put` once per
publish and fetched by each actor in the background. `add` waits while the learner's inbox
is full or the actors are ahead of the replay ratio (the `RateLimiter`), so a slow learner
slows the actors instead of filling the object store.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import ray
import torch

from qfleet.config import Config, config_from_dict
from qfleet.envs import EnvSpec
from qfleet.errors import QfleetError
from qfleet.learner.inbox import Inbox
from qfleet.learner.learner import Learner, check_replay_fits, pick_device
from qfleet.learner.rate_limiter import RateLimiter
from qfleet.learner.tally import StatsWindow
from qfleet.stats import FleetStats
from qfleet.transitions import Chunk, Episode


class Reply(NamedTuple):
    """`add`'s answer to an actor."""

    version: int
    """The newest published weights' version."""
    weights: list[ray.ObjectRef]
    """[their ref]: in a list, so that Ray hands the actor the ref, not the weights."""
    env_steps: int
    """The fleet's env steps (the linear ε schedule's clock)."""
    stop: bool
    """The learner is stopping: the actor ends."""


class LearnerWorker:
    """Runs the Learner's update loop in a thread; `add`/`stats` are served by asyncio."""

    def __init__(self, config: dict[str, Any], spec: EnvSpec,
                 start: dict[str, Any] | None = None) -> None:
        """`start`: a checkpoint's state to continue from (`Learner.load_state_dict`).

        A learner that cannot run as configured does not raise here (Ray would hand the
        driver only the error's text): `placement()`, the driver's first call, raises it,
        so that it crosses Ray as its own type."""
        self.config: Config = config_from_dict(config)
        self._refused: QfleetError | None = None
        try:
            device = pick_device(self.config.learner.device)
            check_replay_fits(self.config, spec, device)
        except QfleetError as err:
            self._refused = err
            return
        self._start(spec, device, start)

    def _start(self, spec: EnvSpec, device: torch.device,
               start: dict[str, Any] | None) -> None:
        lc = self.config.learner
        torch.set_num_threads(lc.num_threads)
        self.learner = Learner(self.config, spec, device)
        self.limiter = RateLimiter(self.config)
        self.window = StatsWindow(self.learner.device)
        self.notes: list[str] = []  # what the driver should print (e.g. a replay not restored)
        if start is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.learner.load_state_dict(start)
            self.notes = [str(w.message) for w in caught]
        nan_after = os.environ.get("QFLEET_TEST_NAN_AFTER_UPDATES")
        if nan_after is not None:  # fault injection for the tests: every loss NaN after N
            limit = int(nan_after)
            self.learner.fault_hook = lambda loss: (
                loss * float("nan") if self.learner.updates >= limit else loss)
        self._lock = threading.Lock()  # the Learner: update thread vs. stats/state calls
        self.inbox: Inbox[Chunk] = Inbox(
            lc.inbox_chunks, lambda incoming: self.limiter.can_insert(self.learner, incoming))
        self._nodes: set[str] = set()
        self._chunks_by_actor: dict[int, int] = {}
        self._pids: dict[int, int] = {}
        self._devices: dict[int, str] = {}
        self._episodes: list[Episode] = []
        self._over_budget = 0  # chunks dropped past stop.env_steps
        self._stopping = False
        self._error: BaseException | None = None
        self._weights: tuple[int, ray.ObjectRef]
        self._publish()
        self._node = ray.get_runtime_context().get_node_id()
        self._thread = threading.Thread(target=self._train_loop, name="learner", daemon=True)
        self._thread.start()

    def _publish(self) -> None:
        version, state = self.learner.get_weights()
        self._weights = (version, ray.put(state))

    def _train_loop(self) -> None:
        publish_every = self.config.learner.publish_every
        try:
            while not self._stopping:
                while self.limiter.wants_data(self.learner):
                    chunk = self.inbox.get()
                    if chunk is None:
                        break
                    self._ingest(chunk)
                if self.limiter.can_update(self.learner):
                    with self._lock:
                        self.window.update(self.learner.step(self.learner.sample()))
                        if self.learner.updates % publish_every == 0:
                            self._publish()
                    self.inbox.made_room()
                else:
                    chunk = self.inbox.get(timeout=0.02)
                    if chunk is not None:
                        self._ingest(chunk)
        except BaseException as err:  # surfaced to actors and driver by add()/stats()
            self._error = err
            self.inbox.close(error=err)

    def _ingest(self, chunk: Chunk) -> None:
        budget = self.config.stop.env_steps
        if budget is not None and self.learner.env_steps >= budget:
            # The env-step budget caps what is learned from, not only when the driver
            # notices (up to a tick later): a chunk past it is answered and dropped, so a
            # run overshoots by at most the one chunk that crossed it (the Atari 100k
            # protocol's 100k agent steps mean 100k).
            self._over_budget += 1
            self.inbox.taken(len(chunk.transitions))
            return
        with self._lock:
            self.window.chunk(chunk, self.learner.version)
            self.limiter.saw_chunk(len(chunk.transitions))
            self._episodes.extend(self.learner.add(chunk))
            self._nodes.add(chunk.node)
            self._pids[chunk.actor_index] = chunk.pid
            self._devices[chunk.actor_index] = chunk.device
            self._chunks_by_actor[chunk.actor_index] = \
                self._chunks_by_actor.get(chunk.actor_index, 0) + 1
        self.inbox.taken(len(chunk.transitions))

    async def add(self, chunk: Chunk) -> Reply:
        """Queue a chunk; wait while the inbox is full or the actors are ahead of the
        replay ratio (backpressure); reply with the newest weights."""
        await self.inbox.put(chunk, len(chunk.transitions))
        version, ref = self._weights
        return Reply(version, [ref], self.learner.env_steps, self._stopping)

    def _pop_stats(self) -> tuple[Any, list[Episode]]:
        learner = self.window.pop(self.learner)
        episodes, self._episodes = self._episodes, []
        return learner, episodes

    async def stats(self) -> FleetStats:
        if self._error is not None:
            raise RuntimeError(f"learner failed: {self._error!r}") from self._error
        # Off the event loop: while the update thread holds the lock, `add` still runs.
        learner, episodes = await self._read(self._pop_stats)
        return FleetStats(learner, tuple(episodes), self._weights[1], len(self.inbox),
                          frozenset(self._nodes), dict(self._chunks_by_actor),
                          dict(self._pids), os.getpid(), dict(self._devices),
                          self._over_budget)

    def _locked(self, read: Callable[[], Any]) -> Any:
        with self._lock:
            return read()

    async def _read(self, read: Callable[[], Any]) -> Any:
        """`read()` under the learner's lock, off the event loop: a checkpoint copying a
        GiB-sized replay must not hold up every actor's `add` and the driver's stats."""
        return await asyncio.to_thread(self._locked, read)

    def _state(self, include_replay: bool) -> dict[str, Any]:
        state = self.learner.state_dict()
        if include_replay:
            state["replay"] = self.learner.replay_state()
        return state

    async def state(self, include_replay: bool = False) -> dict[str, Any]:
        """Checkpoint state; with the replay taken under the same lock, so both belong to
        the same update count."""
        return await self._read(lambda: self._state(include_replay))

    async def stop(self) -> dict[str, Any]:
        """Stop learning and tell every actor at its next send; return the final state."""
        self._stopping = True
        self.inbox.close()
        await asyncio.to_thread(self._thread.join, 10.0)
        return await self._read(self.learner.state_dict)

    async def replay_state(self) -> dict[str, Any] | None:
        """The replay's contents (after `stop`), for `--resume`."""
        return await self._read(self.learner.replay_state)

    async def replay_bytes(self) -> int:
        return self.learner.replay.nbytes()

    async def placement(self) -> tuple[str, str, list[str]]:
        """The learner's device and Ray node (the driver puts the evaluator beside it), and
        its notes from starting; raises what refused the learner's config."""
        if self._refused is not None:
            raise self._refused
        return str(self.learner.device), self._node, self.notes


RemoteLearner = ray.remote(LearnerWorker)
