"""The Ray edge: thin wrappers that make the plain Actor, Learner and Evaluator distributed.

Data flow (docs/ARCHITECTURE.md): actors push chunks to `LearnerWorker.add`, whose reply
carries the newest weight version and its object ref; weights are `ray.put` once per
publish and fetched by each actor in the background. `add` waits while the learner's inbox
is full, so a slow learner slows the actors instead of filling the object store.

A learner may be lost and restarted by the driver: an actor that finds its learner gone
drops what it had in flight, waits, and carries on with the learner that `set_learner`
hands it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import ray
import torch

from qfleet.actors.actor import Actor
from qfleet.config import Config, config_from_dict
from qfleet.envs import EnvSpec
from qfleet.evaluation import Evaluator, Recording
from qfleet.learner.inbox import Inbox
from qfleet.learner.learner import Learner, check_replay_fits, pick_device
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

SETTLE_S = 10.0
"""How long an actor told to switch learners waits for the old one's pending replies."""


class LearnerWorker:
    """Runs the Learner's update loop in a thread; `add`/`stats` are served by asyncio."""

    def __init__(self, config: dict[str, Any], spec: EnvSpec,
                 start: dict[str, Any] | None = None) -> None:
        """`start`: a checkpoint's state to continue from (`Learner.load_state_dict`)."""
        self.config: Config = config_from_dict(config)
        lc = self.config.learner
        torch.set_num_threads(lc.num_threads)
        device = pick_device(lc.device)
        check_replay_fits(self.config, spec, device)
        self.learner = Learner(self.config, spec, device)
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
        self.inbox: Inbox[Chunk] = Inbox(lc.inbox_chunks, self.learner.accepts)
        self._nodes: set[str] = set()
        self._chunks_by_actor: dict[int, int] = {}
        self._pids: dict[int, int] = {}
        self._devices: dict[int, str] = {}
        self._episodes: list[Episode] = []
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
                while self.learner.wants_data():
                    chunk = self.inbox.get()
                    if chunk is None:
                        break
                    self._ingest(chunk)
                if self.learner.ready():
                    with self._lock:
                        self.learner.step()
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
        with self._lock:
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
        learner = self.learner.pop_stats()
        episodes, self._episodes = self._episodes, []
        return learner, episodes

    async def stats(self) -> FleetStats:
        if self._error is not None:
            raise RuntimeError(f"learner failed: {self._error!r}") from self._error
        # Off the event loop: while the update thread holds the lock, `add` still runs.
        learner, episodes = await self._read(self._pop_stats)
        return FleetStats(learner, tuple(episodes), self._weights[1], len(self.inbox),
                          frozenset(self._nodes), dict(self._chunks_by_actor),
                          dict(self._pids), os.getpid(), dict(self._devices))

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
        its notes from starting."""
        return str(self.learner.device), self._node, self.notes


class LearnerGone(Exception):
    """The actor's learner died or failed: wait for the driver's next one."""


class ActorWorker:
    """Runs `Actor.collect` in a loop, sending chunks with at most `max_in_flight` pending.

    Made remote with two threads: `run` acts, and `set_learner` (from the driver) points a
    running actor at a restarted learner and reports how many chunks the old one lost.
    """

    def __init__(self, config: dict[str, Any], spec: EnvSpec, index: int, seed: int,
                 learner: ray.actor.ActorHandle, generation: int = 0) -> None:
        self.config = config_from_dict(config)
        self._spec, self._index, self._seed = spec, index, seed
        self._cond = threading.Condition()
        self._learner, self._generation = learner, generation
        self._next: tuple[ray.actor.ActorHandle, int] | None = None
        self._dropped = 0  # chunks lost with dead learners since the last set_learner
        self._running = True
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def set_learner(self, learner: ray.actor.ActorHandle, generation: int) -> int:
        """Switch to the learner of `generation` (once any chunks in flight to the old one
        are settled); returns the chunks dropped since the last switch."""
        with self._cond:
            if generation > self._generation:
                self._next = (learner, generation)
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._next is None or not self._running,
                                    timeout=2 * SETTLE_S)
            dropped, self._dropped = self._dropped, 0
            return dropped

    def run(self) -> int:
        """Act until the learner says stop; returns the env steps this actor took. The
        envs are made here, not in the constructor, so that an env's own exception reaches
        the driver as this task's error."""
        try:
            actor = Actor(self.config, self._spec, self._index, self._seed)
            try:
                return self._act(actor)
            finally:
                actor.close()
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()

    def _act(self, actor: Actor) -> int:
        a = self.config.actors
        inflight: list[ray.ObjectRef] = []
        pending: tuple[int, ray.ObjectRef] | None = None
        floor = actor.version  # weights older than this are not worth loading
        steps = 0
        while True:
            if self._next is not None:
                self._switch(inflight, settle=True)
                # A restarted learner may count versions from an older checkpoint.
                inflight, pending, floor = [], None, -1
            chunk = actor.collect(a.chunk_steps)
            chunk.node, chunk.pid = self.node, self.pid
            steps += chunk.env_steps
            # Task events off for the hot path: the GCS would keep one per chunk (it grew
            # ~4 MiB/min in `qfleet bench soak` with them on).
            inflight.append(self._learner.add.options(enable_task_events=False).remote(chunk))
            # Block only when the in-flight bound is reached; otherwise just harvest replies.
            timeout = None if len(inflight) >= a.max_in_flight else 0
            ready, inflight = ray.wait(inflight, num_returns=1, timeout=timeout)
            try:
                for ref in ready:
                    reply = self._reply(ref)
                    if reply is None:
                        continue
                    version, (weights_ref,), fleet_steps, stop = reply
                    if stop:
                        return steps
                    actor.set_fleet_step(fleet_steps)
                    newest = pending[0] if pending else floor
                    if version > newest:
                        pending = (version, weights_ref)
            except LearnerGone:
                with self._cond:
                    self._dropped += 1 + len(inflight)
                self._switch([], settle=False)
                inflight, pending, floor = [], None, -1
                continue
            if pending is not None and ray.wait([pending[1]], timeout=0)[0]:
                try:
                    actor.set_weights(pending[0], ray.get(pending[1]))
                    floor = actor.version
                except ray.exceptions.ObjectLostError:
                    pass  # published by a learner that died since; its successor publishes
                pending = None

    def _reply(self, ref: ray.ObjectRef) -> Reply | None:
        """The learner's answer to one chunk; None if that chunk was lost on the way."""
        try:
            return ray.get(ref)
        except ray.exceptions.ActorUnavailableError:
            # Unreachable for now (a network blip): this chunk may or may not have arrived.
            time.sleep(0.5)
            return None
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            raise LearnerGone from err

    def _switch(self, inflight: list[ray.ObjectRef], settle: bool) -> None:
        """Take the next learner, waiting for the driver to provide one. With `settle`, the
        replies still due from the old learner are awaited first; those that never come
        are counted as dropped."""
        failed = 0
        if settle and inflight:
            ready, rest = ray.wait(inflight, num_returns=len(inflight), timeout=SETTLE_S)
            failed = len(rest)
            for ref in ready:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError:
                    failed += 1
        with self._cond:
            self._dropped += failed
            # The driver restarts a lost learner within its start timeout; an actor left
            # waiting longer fails, and the driver restarts it instead.
            patience = self.config.learner.start_timeout_s + 2 * SETTLE_S
            if not self._cond.wait_for(lambda: self._next is not None, timeout=patience):
                raise RuntimeError(f"no new learner within {patience:g} s of losing one")
            assert self._next is not None
            self._learner, self._generation = self._next
            self._next = None
            self._cond.notify_all()


class EvaluatorWorker:
    def __init__(self, config: dict[str, Any], spec: EnvSpec) -> None:
        self.evaluator = Evaluator(config_from_dict(config), spec)

    def evaluate(self, state: dict[str, torch.Tensor], episodes: int,
                 epsilon: float) -> tuple[list[tuple[float, int, bool]], float]:
        start = time.perf_counter()
        result = self.evaluator.evaluate(state, episodes, epsilon)
        return [tuple(e) for e in result], time.perf_counter() - start

    def record(self, state: dict[str, torch.Tensor], epsilon: float) -> Recording:
        return self.evaluator.record(state, epsilon)


RemoteLearner = ray.remote(LearnerWorker)
# Two threads: `run` acts while `set_learner` may arrive from the driver.
RemoteActor = ray.remote(max_concurrency=2)(ActorWorker)
RemoteEvaluator = ray.remote(EvaluatorWorker)
