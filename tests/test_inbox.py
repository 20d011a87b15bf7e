"""The learner's inbox: backpressure between async senders and the learner thread, driven
by a real thread and a real asyncio loop."""

import asyncio
import random
import threading
import time

import pytest

from qfleet.learner.inbox import Inbox, InboxClosed


def test_counts_hold_under_concurrent_senders_and_a_taking_thread():
    """Many senders, one taker: every item arrives once, each sender's items in order, the
    queue never exceeds its bound, and the queued count returns to zero (no lost
    updates to it, as an unlocked counter would lose them)."""
    inbox: Inbox[tuple[int, int]] = Inbox(max_chunks=3, accepts=lambda n: True)
    senders, per_sender = 8, 200
    taken: list[tuple[int, int]] = []
    longest = 0
    stop = threading.Event()

    def learner() -> None:
        nonlocal longest
        while not stop.is_set() or len(inbox):
            longest = max(longest, len(inbox))
            item = inbox.get(timeout=0.01)
            if item is not None:
                taken.append(item)
                if random.random() < 0.1:
                    time.sleep(0.001)  # a slow update now and then: senders must wait
                inbox.taken(item[1] % 5 + 1)

    async def send(sender: int) -> None:
        for k in range(per_sender):
            assert await inbox.put((sender, k), size=k % 5 + 1)

    thread = threading.Thread(target=learner)
    thread.start()

    async def main() -> None:
        await asyncio.gather(*(send(s) for s in range(senders)))

    asyncio.run(main())
    stop.set()
    thread.join(timeout=10)
    assert len(taken) == senders * per_sender
    for s in range(senders):
        assert [k for who, k in taken if who == s] == list(range(per_sender))
    assert longest <= 3
    assert inbox.queued == 0 and len(inbox) == 0


def test_a_sender_waits_for_the_replay_ratio_and_is_woken_by_the_learner():
    allowed = {"n": 10}
    inbox: Inbox[str] = Inbox(max_chunks=100, accepts=lambda n: n <= allowed["n"])

    async def main() -> float:
        assert await inbox.put("a", size=8)
        start = time.monotonic()

        def learner_catches_up() -> None:
            time.sleep(0.3)
            allowed["n"] = 100  # updates made room under the ratio
            inbox.made_room()

        threading.Thread(target=learner_catches_up).start()
        assert await inbox.put("b", size=8)  # 16 > 10: must wait for the learner
        return time.monotonic() - start

    waited = asyncio.run(main())
    assert 0.25 <= waited < 5.0
    assert inbox.get() == "a" and inbox.get() == "b" and inbox.get() is None


def test_closing_releases_waiting_senders_and_reports_a_learner_failure():
    inbox: Inbox[int] = Inbox(max_chunks=1, accepts=lambda n: True)

    async def main() -> list[bool]:
        assert await inbox.put(1, size=1)
        waiting = asyncio.ensure_future(inbox.put(2, size=1))  # the inbox is full
        await asyncio.sleep(0.1)
        assert not waiting.done()
        threading.Thread(target=inbox.close).start()
        return [await waiting, await inbox.put(3, size=1)]

    assert asyncio.run(main()) == [False, False]  # stopping: nothing more is queued

    failed: Inbox[int] = Inbox(max_chunks=1, accepts=lambda n: True)
    failed.close(error=MemoryError("CUDA out of memory"))

    async def send() -> None:
        await failed.put(1, size=1)

    with pytest.raises(InboxClosed) as info:
        asyncio.run(send())
    assert isinstance(info.value.__cause__, MemoryError)
