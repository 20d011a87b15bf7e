"""Exploration schedules, pure functions of an env's place in the fleet or of time.

Ape-X (Horgan et al. 2018) gives each of the fleet's N envs a fixed
ε_i = ε^(1 + α·i/(N−1)): a few envs explore hard, most act nearly greedily, and no
schedule has to be tuned to the run length. N counts every env the fleet may ever run
(an elastic fleet's `max_actors`), and the places are dealt out so that any first few
actors already spread over the whole schedule: a fleet that has not grown yet explores
and exploits as widely as a full one. The linear decay is the classic DQN one.
"""

from __future__ import annotations

import numpy as np

from qfleet.config import ActorsConfig


def apex_epsilon(i: int | np.ndarray, n: int, eps: float = 0.4, alpha: float = 7.0) -> np.ndarray:
    """ε_i for env i of n; a single env gets ε itself."""
    i = np.asarray(i, dtype=np.float64)
    if n <= 1:
        return np.full(i.shape, eps)
    return eps ** (1.0 + alpha * i / (n - 1))


def explore(greedy: np.ndarray, epsilon: float, num_actions: int,
            rng: np.random.Generator) -> np.ndarray:
    """`greedy` actions, each replaced by a uniformly random one with probability
    `epsilon` (evaluation and `Policy.act`: one ε for the whole batch)."""
    if epsilon <= 0:
        return greedy
    random = rng.random(len(greedy)) < epsilon
    return np.where(random, rng.integers(0, num_actions, len(greedy)), greedy)


def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    """From `start` at step 0 to `end` at `decay_steps`, then flat."""
    frac = min(max(step, 0) / decay_steps, 1.0)
    return start + frac * (end - start)


def spread_rank(index: int, size: int) -> int:
    """Actor `index`'s rank among 0..size−1 ordered by van der Corput's sequence (0, ½, ¼,
    ¾, …): the first k actors take ranks spread evenly over 0..size−1, for every k."""
    def radical_inverse(i: int) -> float:
        value, scale = 0.0, 0.5
        while i:
            value += scale * (i & 1)
            i, scale = i >> 1, scale / 2
        return value

    mine = radical_inverse(index)
    return sum(radical_inverse(i) < mine for i in range(size))


def fleet_epsilons(cfg: ActorsConfig, actor_index: int, fleet_step: int = 0) -> np.ndarray:
    """ε for each env of one actor: env j of actor a takes place j·A + rank(a) of the A·E
    places of a fleet of at most A actors with E envs each (`spread_rank`)."""
    e = cfg.envs_per_actor
    if cfg.epsilon == "none":
        return np.zeros(e)
    if cfg.epsilon == "apex":
        size = cfg.fleet_size
        places = np.arange(e) * size + spread_rank(actor_index, size)
        return apex_epsilon(places, size * e, cfg.apex_epsilon, cfg.apex_alpha)
    eps = linear_epsilon(fleet_step - cfg.epsilon_hold_steps, cfg.epsilon_start,
                         cfg.epsilon_end, cfg.epsilon_decay_steps)
    return np.full(e, eps)
