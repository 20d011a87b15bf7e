"""The replay-ratio rule: when the learner may update and when actors may send more.

Ape-X's actors and learner run at their own speeds; `learner.replay_ratio` (samples drawn
per transition inserted, Reverb's `SampleToInsertRatio`) ties them together. The learner
waits when it is ahead of the ratio (`can_update`); the inbox holds actors back when they
are ahead (`can_insert`). Both sides read the same counts, so the rule lives here once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qfleet.config import Config

if TYPE_CHECKING:
    from qfleet.learner.learner import Learner


class RateLimiter:
    def __init__(self, config: Config) -> None:
        self.config = config
        a = config.actors
        # What one actor sends at most, known before any chunk came: a resumed learner with
        # its replay back and no chunk seen yet must still admit a whole one (slack below).
        self.largest_chunk = a.chunk_steps * a.envs_per_actor

    def saw_chunk(self, transitions: int) -> None:
        self.largest_chunk = max(self.largest_chunk, transitions)

    def can_update(self, learner: Learner) -> bool:
        """Warm-up done, a batch available, and not ahead of the replay ratio."""
        lc, rc = self.config.learner, self.config.replay
        if not learner.replay.can_sample(lc.batch_size):
            return False
        if rc.kind != "none":
            if len(learner.replay) < rc.min_size:
                return False
            if lc.replay_ratio is not None and \
                    (learner.updates + 1) * lc.batch_size > lc.replay_ratio * learner.transitions:
                return False
        return True

    def can_insert(self, learner: Learner, incoming: int) -> bool:
        """Whether `incoming` more transitions keep the actors within the replay ratio.

        With `replay_ratio` set, actors are throttled so that each transition is replayed
        about `replay_ratio` times on average; a couple of chunks of slack keep the learner
        from ever waiting on data when it is the bottleneck.
        """
        lc, rc = self.config.learner, self.config.replay
        if lc.replay_ratio is None or rc.kind == "none" or not lc.throttle_actors:
            return True
        if len(learner.replay) < rc.min_size:
            return True  # warming up (also after a resume, whose replay starts empty)
        allowed = max(rc.min_size, learner.updates * lc.batch_size / lc.replay_ratio)
        slack = 2 * max(self.largest_chunk, lc.batch_size)
        return learner.transitions + incoming <= allowed + slack

    def wants_data(self, learner: Learner) -> bool:
        """A stream learns each transition once: take more only when the stream runs dry."""
        if self.config.replay.kind == "none":
            return len(learner.replay) < self.config.learner.batch_size
        return True
