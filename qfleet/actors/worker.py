"""The actor's Ray edge: `ActorWorker` runs the plain `Actor` in a loop and streams its
chunks to the learner, with at most `actors.max_in_flight` unanswered.

A learner may be lost and restarted by the driver: an actor that finds its learner gone
drops what it had in flight, waits, and carries on with the learner that `set_learner`
hands it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray

from qfleet.actors.actor import Actor
from qfleet.config import config_from_dict
from qfleet.envs import EnvSpec
from qfleet.learner.worker import Reply

SETTLE_S = 10.0
"""How long an actor told to switch learners waits for the old one's pending replies."""



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
            # Task events off for the hot path: the GCS would keep one per chunk, and grow
            # without bound over a long run (`qfleet bench soak` shows it).
            inflight.append(self._learner.add.options(enable_task_events=False).remote(chunk))
            # Block only when the in-flight bound is reached; otherwise just harvest replies.
            timeout = None if len(inflight) >= a.max_in_flight else 0
            ready, inflight = ray.wait(inflight, num_returns=1, timeout=timeout)
            try:
                for ref in ready:
                    reply = self._reply(ref)
                    if reply is None:
                        continue
                    if reply.stop:
                        return steps
                    actor.set_fleet_step(reply.env_steps)
                    newest = pending[0] if pending else floor
                    if reply.version > newest:
                        pending = (reply.version, reply.weights[0])
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


# Two threads: `run` acts while `set_learner` may arrive from the driver.
RemoteActor = ray.remote(max_concurrency=2)(ActorWorker)
