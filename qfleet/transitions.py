"""What crosses from actors to the learner: batches of n-step transitions in numpy.

A transition stores `discount` = γ^k (k = steps until its bootstrap state) or 0 when the
episode terminated, instead of a done flag: n-step returns, time-limit truncation (which
must still bootstrap) and the course's (1 − done) all become one multiplication.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


class Transitions(NamedTuple):
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    next_obs: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.action.shape[0])

    @staticmethod
    def concat(parts: list[Transitions]) -> Transitions:
        if len(parts) == 1:
            return parts[0]
        return Transitions(*(np.concatenate(col) for col in zip(*parts, strict=True)))


class Frames(NamedTuple):
    """New Atari frames of one chunk: each frame of every env's stream, sent exactly once.

    With compact frames, a transition's `obs`/`next_obs` are references
    `(stream, seq, depth)`: the newest frame's sequence number in its env's stream and how
    many of the stacked frames belong to the episode (the rest are zero padding, as the
    ALE vector env pads an episode's first stacks).
    """

    frames: np.ndarray  # uint8 [K, H, W]
    stream: np.ndarray  # int64 [K]
    seq: np.ndarray  # int64 [K]

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.seq.shape[0])


class Episode(NamedTuple):
    ret: float
    """Undiscounted, unclipped return."""
    length: int
    terminated: bool
    cut: bool = False
    """An evaluation episode stopped by the evaluation's time limit, not by the env or its
    step cap (not a score: left out of the mean)."""


@dataclass
class Chunk:
    """One send from an actor: its transitions plus what the driver's stats need."""

    transitions: Transitions
    actor_index: int
    version: int
    """Weight version that acted, so the learner can measure policy lag."""
    env_steps: int
    episodes: list[Episode] = field(default_factory=list)
    epsilon: float = 0.0
    frames: Frames | None = None
    """Set when transitions reference frames instead of carrying observations."""
    node: str = ""
    """Ray node of the sending actor (the run's `actor_nodes` comes from these)."""
    pid: int = 0
    """Process of the sending actor (for `qfleet bench pipeline`'s CPU accounting)."""
    device: str = "cpu"
    """Where the actor's acting network ran (`cpu`, `cuda`)."""


def uses_frame_refs(config: Any, spec: Any) -> bool:
    """Atari stacks into a replay travel as frame references; everything else as arrays."""
    return bool(spec.is_atari) and config.replay.kind != "none"
