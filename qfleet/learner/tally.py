"""The means the driver reads each tick: loss and Q over the updates since its last pull,
policy lag and ε over the chunks since then.

Sums of update metrics stay device tensors until the pull, so the update loop never waits
on the GPU for a statistic.
"""

from __future__ import annotations

import torch

from qfleet.learner.learner import Learner, UpdateMetrics
from qfleet.stats import LearnerStats
from qfleet.transitions import Chunk


class StatsWindow:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        zero = torch.zeros((), device=self.device)
        self._loss_sum, self._q_sum = zero.clone(), zero.clone()
        self._updates = 0
        self._lag_sum = 0.0
        self._eps_sum = 0.0
        self._chunks = 0

    def update(self, metrics: UpdateMetrics | None) -> None:
        if metrics is None:  # skipped for a non-finite loss: the learner counts those
            return
        self._loss_sum += metrics.loss
        self._q_sum += metrics.mean_q
        self._updates += 1

    def chunk(self, chunk: Chunk, published: int) -> None:
        """`published`: the learner's newest weight version when the chunk arrived."""
        # A chunk acted on by a restarted learner's predecessor may carry a newer version.
        self._lag_sum += max(published - chunk.version, 0)
        self._chunks += 1
        self._eps_sum += chunk.epsilon

    def pop(self, learner: Learner) -> LearnerStats:
        """The learner's counters and the means since the last call; resets the means."""
        n, c = self._updates, self._chunks
        stats = LearnerStats(
            learner.counters, replay_size=len(learner.replay),
            nonfinite_skipped=learner.nonfinite_skipped,
            nonfinite_streak=learner.nonfinite_streak,
            loss=float(self._loss_sum) / n if n else None,
            mean_q=float(self._q_sum) / n if n else None,
            policy_lag=self._lag_sum / c if c else None,
            epsilon=self._eps_sum / c if c else None)
        self._reset()
        return stats
