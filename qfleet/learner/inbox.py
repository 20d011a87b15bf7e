"""The learner's inbox: chunks from actors to the learner thread, with backpressure.

Senders are coroutines on the Ray actor's event loop (`LearnerWorker.add`); the taker is
the learner's update thread. A sender waits while `max_chunks` chunks are queued or while
`accepts(queued transitions + its own)` says the actors are ahead of the replay ratio, so
a slow learner slows the actors instead of filling the object store. One lock guards the
queue and its counts; everything else here only wakes waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")

_SAFETY_NET_S = 0.05
"""A waiting sender re-checks this often even unwoken (`accepts` may turn true on its own)."""


class InboxClosed(Exception):
    """The learner stopped; with `__cause__` set when it failed."""


class Inbox(Generic[Item]):
    def __init__(self, max_chunks: int, accepts: Callable[[int], bool]) -> None:
        self._max = max_chunks
        self._accepts = accepts
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._items: deque[tuple[Item, int]] = deque()
        self._queued = 0  # transitions accepted but not yet taken in by the learner
        self._closed = False
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Event | None = None
        self._waiting = 0  # the waiting sender's size (0: none); only its room wakes it
        self._turn: asyncio.Lock | None = None

    # -- the senders' side (one event loop) ------------------------------------------------
    async def put(self, item: Item, size: int) -> bool:
        """Queue `item` of `size` transitions once there is room; False when the inbox is
        closed (the learner is stopping). Raises InboxClosed when the learner failed."""
        if self._turn is None:
            self._loop = asyncio.get_running_loop()
            self._turn, self._room = asyncio.Lock(), asyncio.Event()
        assert self._room is not None
        # One admission at a time, first come first served: an actor's chunks stay in
        # order, which its frame references rely on.
        async with self._turn:
            while True:
                with self._lock:
                    self._waiting = 0
                    if self._closed:
                        if self._error is not None:
                            raise InboxClosed("the learner failed") from self._error
                        return False
                    if self._has_room(size):
                        self._items.append((item, size))
                        self._queued += size
                        self._not_empty.notify()
                        return True
                    # Under the lock: a wake-up from the learner after this one counts.
                    self._room.clear()
                    self._waiting = max(size, 1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout=_SAFETY_NET_S)

    # -- the learner thread's side -----------------------------------------------------------
    def get(self, timeout: float = 0.0) -> Item | None:
        """The oldest item, waiting up to `timeout` seconds; None if there is none. Call
        `taken(size)` once the learner holds it, which frees its room."""
        with self._not_empty:
            if not self._items and timeout > 0:
                self._not_empty.wait(timeout)
            if not self._items:
                return None
            return self._items.popleft()[0]

    def taken(self, size: int) -> None:
        """`size` transitions left the queue for the learner's replay."""
        with self._lock:
            self._queued -= size
        self.made_room()

    def _has_room(self, size: int) -> bool:
        return len(self._items) < self._max and self._accepts(self._queued + size)

    def made_room(self) -> None:
        """Wake the waiting sender once its chunk fits: an item was taken or updates made
        the ratio allow it. Not after every update: each wake-up costs the learner a trip
        through the event loop's thread (and the GIL) for nothing."""
        with self._lock:
            if not self._waiting or not (self._closed or self._has_room(self._waiting)):
                return
            self._waiting = 0
        loop, room = self._loop, self._room
        if loop is not None and room is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                loop.call_soon_threadsafe(room.set)

    def close(self, error: BaseException | None = None) -> None:
        """No more items: senders return at once (raising if `error`)."""
        with self._lock:
            self._closed = True
            self._error = error
            self._not_empty.notify_all()
            self._waiting = 1  # wake whoever waits, whatever the flag said
        self.made_room()

    # -- stats -------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def queued(self) -> int:
        """Transitions admitted but not yet taken."""
        with self._lock:
            return self._queued
