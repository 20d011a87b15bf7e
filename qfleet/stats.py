"""What crosses from the learner to the driver: counters and one typed snapshot per tick.

The driver reads these and nothing else of the learner in steady state; the names here
are the contract between `Learner`, its Ray wrapper, the driver, TensorBoard and the
benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qfleet.transitions import Episode


@dataclass(frozen=True)
class Counters:
    """What a run resumes from, and what a restarted learner continues."""

    updates: int = 0
    """Gradient updates the learner's weights embody."""
    env_steps: int = 0
    """Env steps over the whole fleet (linear ε decays with these)."""
    transitions: int = 0
    """Transitions the learner took in (the replay ratio counts against these)."""
    episodes: int = 0
    version: int = 0
    """Weight versions published so far."""

    def to_dict(self) -> dict[str, int]:
        """Plain data, as checkpoints store it (loadable with `weights_only=True`)."""
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Counters:
        return Counters(**{k: int(data.get(k, 0)) for k in Counters.__dataclass_fields__})


@dataclass(frozen=True)
class LearnerStats:
    """The plain learner's counters and the means since the last pull."""

    counters: Counters
    replay_size: int = 0
    nonfinite_skipped: int = 0
    """Updates skipped for a NaN/inf loss, in all."""
    nonfinite_streak: int = 0
    """Consecutive skipped updates up to now."""
    loss: float | None = None
    mean_q: float | None = None
    policy_lag: float | None = None
    """Published weight version minus the version that acted, averaged over chunks."""
    epsilon: float | None = None
    """Mean ε of the envs that sent chunks."""


@dataclass(frozen=True)
class FleetStats:
    """One pull of `LearnerWorker.stats()`: the learner's stats plus what the fleet sent."""

    learner: LearnerStats
    episodes: tuple[Episode, ...] = ()
    """Episodes finished since the last pull, in arrival order."""
    weights: Any = None
    """Object ref of the newest published weights (for the evaluator)."""
    inbox: int = 0
    actor_nodes: frozenset[str] = frozenset()
    """Ray nodes that hosted actors, from their chunks."""
    chunks_by_actor: dict[int, int] = field(default_factory=dict)
    actor_pids: dict[int, int] = field(default_factory=dict)
    learner_pid: int = 0
    actor_devices: dict[int, str] = field(default_factory=dict)
    """Where each actor's acting network ran (`cpu`, `cuda`), from its chunks."""
    chunks_over_budget: int = 0
    """Chunks answered but not learned from: they came after `stop.env_steps` was spent."""

    @property
    def counters(self) -> Counters:
        return self.learner.counters
