"""The n-step adder: turns a vector of env steps into n-step transitions.

Each env keeps a ring of its last n steps and its own clock, so a step may cover all envs
(lockstep) or any batch of them (a batched ALE vector); either way the common case (no
episode ended) is a handful of numpy ops. At an episode end every pending step is flushed
with a shorter return: bootstrapped from the final observation on truncation, not
bootstrapped (discount 0) on termination.
"""

from __future__ import annotations

import numpy as np

from qfleet.transitions import Transitions


def nstep_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """R_m = Σ_{l≥m} γ^(l−m)·r_l for every start m of a reward sequence."""
    out = np.empty(len(rewards), dtype=np.float32)
    acc = 0.0
    for m in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[m]) + gamma * acc
        out[m] = acc
    return out


class NStepAdder:
    def __init__(self, num_envs: int, n: int, gamma: float, obs_shape: tuple[int, ...],
                 obs_dtype: np.dtype) -> None:
        self.n, self.gamma, self.num_envs = n, gamma, num_envs
        self._obs = np.zeros((n, num_envs, *obs_shape), dtype=obs_dtype)
        self._act = np.zeros((n, num_envs), dtype=np.int64)
        self._rew = np.zeros((n, num_envs), dtype=np.float32)
        self._pending = np.zeros(num_envs, dtype=np.int64)
        self._t = np.zeros(num_envs, dtype=np.int64)  # steps recorded, per env
        self._all = np.arange(num_envs)
        self._back = np.arange(-n + 1, 1)  # ring offsets of the last n steps, oldest first
        self._gpow = (gamma ** np.arange(n + 1)).astype(np.float32)

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray, next_obs: np.ndarray,
            envs: np.ndarray | None = None) -> Transitions | None:
        """Record one step of `envs` (default: all, in order); return the transitions it
        completes (or None)."""
        n = self.n
        envs = self._all if envs is None else envs
        s = self._t[envs] % n
        self._t[envs] += 1
        self._obs[s, envs] = obs
        self._act[s, envs] = actions
        self._rew[s, envs] = rewards
        pending = np.minimum(self._pending[envs] + 1, n)
        self._pending[envs] = pending
        done = terminated | truncated
        parts: list[Transitions] = []

        rows = np.flatnonzero((pending == n) & ~done)
        if rows.size:
            full = envs[rows]
            slots = (s[rows] + self._back[:, None]) % n  # (n, rows): oldest .. newest
            ret = self._gpow[:n] @ self._rew[slots, full]
            oldest = slots[0]
            parts.append(Transitions(
                self._obs[oldest, full], self._act[oldest, full], ret.astype(np.float32),
                np.full(full.size, self._gpow[n], dtype=np.float32), next_obs[rows]))
            self._pending[full] -= 1

        for row in np.flatnonzero(done):
            e = envs[row]
            k = int(self._pending[e])
            slots = (s[row] - k + 1 + np.arange(k)) % n
            steps_left = k - np.arange(k)  # steps from each start to the final observation
            discount = (np.zeros(k, dtype=np.float32) if terminated[row]
                        else self._gpow[steps_left])
            parts.append(Transitions(
                self._obs[slots, e], self._act[slots, e],
                nstep_returns(self._rew[slots, e], self.gamma), discount,
                np.repeat(next_obs[row][None], k, axis=0)))
            self._pending[e] = 0

        return Transitions.concat(parts) if parts else None
