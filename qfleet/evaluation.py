"""Greedy evaluation: run whole episodes with (near-)greedy actions and report returns.

Used by the driver's periodic evaluation (as a Ray actor, so training never waits for it)
and by `qfleet evaluate` in-process. Each of the N episodes runs in its own env of one
vector, so one forward pass serves them all.
"""

from __future__ import annotations

import numpy as np
import torch

from qfleet.config import Config
from qfleet.envs import EnvSpec, make_vec_env
from qfleet.networks import build_q_network
from qfleet.transitions import Episode


class Evaluator:
    def __init__(self, config: Config, spec: EnvSpec, seed: int = 1_000_003) -> None:
        torch.set_num_threads(1)
        self.config, self.spec = config, spec
        self.net = build_q_network(config.network, spec).eval().requires_grad_(False)
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def evaluate(self, state: dict[str, torch.Tensor], episodes: int,
                 epsilon: float = 0.0) -> list[Episode]:
        """One episode in each of `episodes` envs; fresh seeds on every call."""
        self.net.load_state_dict(state)
        envs = make_vec_env(self.config.env, episodes, self._seed)
        obs = envs.reset(seed=self._seed)
        self._seed += episodes
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        finished: list[Episode | None] = [None] * episodes
        try:
            while any(f is None for f in finished):
                with torch.inference_mode():
                    actions = self.net(torch.from_numpy(obs)).argmax(dim=1).numpy()
                if epsilon > 0:
                    explore = self._rng.random(episodes) < epsilon
                    actions = np.where(explore, self._rng.integers(0, envs.num_actions,
                                                                   episodes), actions)
                step = envs.step(actions)
                returns += step.rewards
                lengths += 1
                for e in np.flatnonzero(step.terminated | step.truncated):
                    if finished[e] is None:
                        finished[e] = Episode(float(returns[e]), int(lengths[e]),
                                              bool(step.terminated[e]))
                obs = step.obs
        finally:
            envs.close()
        return [f for f in finished if f is not None]
