"""The Ray edge: thin wrappers that make the plain Actor, Learner and Evaluator distributed.

Data flow (DESIGN.md): actors push chunks to `LearnerWorker.add`, whose reply carries the
newest weight version and its object ref; weights are `ray.put` once per publish and fetched
by each actor in the background. `add` waits while the learner's inbox is full, so a slow
learner slows the actors instead of filling the object store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from typing import Any

import ray
import torch

from qfleet.actors.actor import Actor
from qfleet.config import Config, config_from_dict
from qfleet.envs import EnvSpec
from qfleet.evaluate import Evaluator
from qfleet.learner.learner import Learner, check_replay_fits, pick_device
from qfleet.transitions import Chunk, Episode


class LearnerWorker:
    """Runs the Learner's update loop in a thread; `add`/`stats` are served by asyncio."""

    def __init__(self, config: dict[str, Any], spec: EnvSpec,
                 resume: dict[str, Any] | None = None) -> None:
        self.config: Config = config_from_dict(config)
        lc = self.config.learner
        torch.set_num_threads(lc.num_threads)
        device = pick_device(lc.device)
        check_replay_fits(self.config, spec, device)
        self.learner = Learner(self.config, spec, device)
        if resume is not None:
            self.learner.load_state_dict(resume)
        nan_after = os.environ.get("QFLEET_TEST_NAN_AFTER_UPDATES")
        if nan_after is not None:  # fault injection for the tests: every loss NaN after N
            limit = int(nan_after)
            self.learner.fault_hook = lambda loss: (
                loss * float("nan") if self.learner.updates >= limit else loss)
        self._lock = threading.Lock()
        self._inbox: queue.Queue[Chunk] = queue.Queue()
        self._queued = 0  # transitions accepted but not yet in the replay
        self._admit = asyncio.Lock()
        self._room = asyncio.Event()
        self._waiting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nodes: set[str] = set()  # Ray nodes that hosted actors, from their chunks
        self._chunks_by_actor: dict[int, int] = {}
        self._pids: dict[int, int] = {}
        self._episodes: list[Episode] = []
        self._stopping = False
        self._error: BaseException | None = None
        self._weights: tuple[int, ray.ObjectRef] = (0, ray.put(None))
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
                    try:
                        chunk = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    self._ingest(chunk)
                if self.learner.ready():
                    with self._lock:
                        self.learner.step()
                        if self.learner.updates % publish_every == 0:
                            self._publish()
                    self._wake_senders()
                else:
                    with contextlib.suppress(queue.Empty):
                        self._ingest(self._inbox.get(timeout=0.02))
        except BaseException as err:  # surfaced to actors and driver by add()/stats()
            self._error = err

    def _wake_senders(self) -> None:
        if self._waiting and self._loop is not None:
            self._loop.call_soon_threadsafe(self._room.set)

    def _ingest(self, chunk: Chunk) -> None:
        with self._lock:
            self._episodes.extend(self.learner.add(chunk))
            self._nodes.add(chunk.node)
            self._pids[chunk.actor_index] = chunk.pid
            self._chunks_by_actor[chunk.actor_index] = \
                self._chunks_by_actor.get(chunk.actor_index, 0) + 1
            self._queued -= len(chunk.transitions)
        self._wake_senders()

    def _reply(self) -> tuple[int, list[ray.ObjectRef], int, bool]:
        version, ref = self._weights
        return version, [ref], self.learner.env_steps, self._stopping

    def _must_wait(self, incoming: int) -> bool:
        if self._stopping:
            return False
        if self._inbox.qsize() >= self.config.learner.inbox_chunks:
            return True
        return not self.learner.accepts(self._queued + incoming)

    async def add(self, chunk: Chunk) -> tuple[int, list[ray.ObjectRef], int, bool]:
        """Queue a chunk; wait while the inbox is full or the actors are ahead of the
        replay ratio (backpressure); reply with the newest weights."""
        # One admission at a time, first come first served: an actor's chunks stay in
        # order, which its frame references rely on.
        async with self._admit:
            n = len(chunk.transitions)
            self._loop = asyncio.get_running_loop()
            while self._must_wait(n):
                if self._error is not None:
                    raise RuntimeError("learner failed") from self._error
                self._room.clear()
                self._waiting = True
                # Woken by the learner thread when it frees room; the timeout is a safety net.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout=0.05)
                self._waiting = False
            if self._error is not None:
                raise RuntimeError("learner failed") from self._error
            if not self._stopping:
                self._queued += n
                self._inbox.put(chunk)
        return self._reply()

    async def stats(self) -> dict[str, Any]:
        if self._error is not None:
            raise RuntimeError(f"learner failed: {self._error!r}") from self._error
        with self._lock:
            stats = self.learner.pop_stats()
            episodes, self._episodes = self._episodes, []
        stats["episode_list"] = [tuple(e) for e in episodes]
        stats["weights"] = [self._weights[1]]
        stats["inbox"] = self._inbox.qsize()
        stats["actor_nodes"] = sorted(self._nodes)
        stats["chunks_by_actor"] = dict(self._chunks_by_actor)
        stats["pids"] = {"learner": os.getpid(), **{str(k): v for k, v in self._pids.items()}}
        return stats

    async def state(self, include_replay: bool = False) -> dict[str, Any]:
        """Checkpoint state; with the replay taken under the same lock, so both belong to
        the same update count."""
        with self._lock:
            state = self.learner.state_dict()
            if include_replay:
                state["replay"] = self.learner.replay_state()
            return state

    async def stop(self) -> dict[str, Any]:
        """Stop learning and tell every actor at its next send; return the final state."""
        self._stopping = True
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10.0)
        with self._lock:
            return self.learner.state_dict()

    async def replay_state(self) -> dict[str, Any] | None:
        """The replay's contents (after `stop`), for `--resume`."""
        with self._lock:
            return self.learner.replay_state()

    async def replay_bytes(self) -> int:
        return self.learner.replay.nbytes()

    async def placement(self) -> tuple[str, str]:
        """The learner's device and Ray node: the driver puts the evaluator beside it."""
        return str(self.learner.device), self._node


class ActorWorker:
    """Runs `Actor.collect` in a loop, sending chunks with at most `max_in_flight` pending."""

    def __init__(self, config: dict[str, Any], spec: EnvSpec, index: int, seed: int,
                 learner: ray.actor.ActorHandle) -> None:
        self.config = config_from_dict(config)
        self.actor = Actor(self.config, spec, index, seed)
        self.learner = learner
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def run(self) -> int:
        """Act until the learner says stop; returns the env steps this actor took."""
        a = self.config.actors
        inflight: list[ray.ObjectRef] = []
        pending: tuple[int, ray.ObjectRef] | None = None
        steps = 0
        while True:
            chunk = self.actor.collect(a.chunk_steps)
            chunk.node, chunk.pid = self.node, self.pid
            steps += chunk.env_steps
            # Task events off for the hot path: the GCS would keep one per chunk (it grew
            # ~4 MiB/min in `qfleet bench soak` with them on).
            inflight.append(self.learner.add.options(enable_task_events=False).remote(chunk))
            # Block only when the in-flight bound is reached; otherwise just harvest replies.
            timeout = None if len(inflight) >= a.max_in_flight else 0
            ready, inflight = ray.wait(inflight, num_returns=1, timeout=timeout)
            for ref in ready:
                version, (weights_ref,), fleet_steps, stop = ray.get(ref)
                if stop:
                    return steps
                self.actor.set_fleet_step(fleet_steps)
                newest = pending[0] if pending else self.actor.version
                if version > newest:
                    pending = (version, weights_ref)
            if pending is not None:
                done, _ = ray.wait([pending[1]], timeout=0)
                if done:
                    self.actor.set_weights(pending[0], ray.get(pending[1]))
                    pending = None


class EvaluatorWorker:
    def __init__(self, config: dict[str, Any], spec: EnvSpec) -> None:
        self.evaluator = Evaluator(config_from_dict(config), spec)

    def evaluate(self, state: dict[str, torch.Tensor], episodes: int,
                 epsilon: float) -> tuple[list[tuple[float, int, bool]], float]:
        start = time.perf_counter()
        result = self.evaluator.evaluate(state, episodes, epsilon)
        return [tuple(e) for e in result], time.perf_counter() - start


RemoteLearner = ray.remote(LearnerWorker)
RemoteActor = ray.remote(ActorWorker)
RemoteEvaluator = ray.remote(EvaluatorWorker)
