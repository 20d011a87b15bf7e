"""Frame streams: send each Atari frame once and refer to stacks by sequence number.

A stacked observation is its newest frame plus the three before it in the same episode,
so a transition needs only `(stream, seq, depth)` for each of its two observations; the
learner rebuilds the stacks from the frames it stored once. This cuts what crosses the
network and what the replay stores to one frame per step instead of two 4-frame stacks.
"""

from __future__ import annotations

import numpy as np

from qfleet.transitions import Frames


class FrameStreams:
    """The actor's side: one stream per env, numbering every new frame."""

    def __init__(self, first_stream: int, num_envs: int, stack: int) -> None:
        self.stack = stack
        self.stream = np.arange(first_stream, first_stream + num_envs, dtype=np.int64)
        self.seq = np.full(num_envs, -1, dtype=np.int64)  # newest frame of the current obs
        self.start = np.zeros(num_envs, dtype=np.int64)  # first frame of the episode
        self._all = np.arange(num_envs)
        self._frames: list[np.ndarray] = []
        self._streams: list[np.ndarray] = []
        self._seqs: list[np.ndarray] = []

    def _record(self, envs: np.ndarray, frames: np.ndarray) -> None:
        self.seq[envs] += 1
        self._frames.append(frames)
        self._streams.append(self.stream[envs])
        self._seqs.append(self.seq[envs].copy())

    def refs(self, envs: np.ndarray | None = None) -> np.ndarray:
        """`(stream, seq, depth)` of the current observation of each env."""
        envs = slice(None) if envs is None else envs
        depth = np.minimum(self.seq[envs] - self.start[envs] + 1, self.stack)
        return np.stack([self.stream[envs], self.seq[envs], depth], axis=1)

    def reset(self, obs: np.ndarray, envs: np.ndarray | None = None) -> np.ndarray:
        """Start `envs` (default: all) on their reset observations; return their refs."""
        envs = self._all if envs is None else envs
        self._record(envs, obs[:, -1].copy())
        self.start[envs] = self.seq[envs]
        return self.refs(envs)

    def step(self, obs: np.ndarray, next_obs: np.ndarray, done: np.ndarray,
             envs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Record one step of `envs` (default: all); return refs of the true next obs and
        of the obs to act on."""
        envs = self._all if envs is None else envs
        self._record(envs, next_obs[:, -1].copy())
        next_refs = self.refs(envs)
        ended = np.flatnonzero(done)
        if ended.size:  # the reset observation starts a new episode in the same stream
            self._record(envs[ended], obs[ended, -1].copy())
            self.start[envs[ended]] = self.seq[envs[ended]]
        return next_refs, self.refs(envs)

    def drain(self) -> Frames:
        """Frames recorded since the last drain, in recording order."""
        frames = Frames(np.concatenate(self._frames), np.concatenate(self._streams),
                        np.concatenate(self._seqs))
        self._frames, self._streams, self._seqs = [], [], []
        return frames
