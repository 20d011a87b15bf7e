"""Replay storage on the learner's device, with the sampling rule kept separate.

`ReplayBuffer` is a ring of preallocated tensors: inserts are slice copies, sampling is one
`randint` and one gather per column — no Python loop per item. `StreamBuffer` is the
course's barebone "no replay": every transition is learned from exactly once, in order.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch

from qfleet.transitions import Transitions

# Chunks arrive from Ray's object store as read-only arrays; they are only ever read here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_TORCH_DTYPE = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32}


class Batch(NamedTuple):
    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_obs: torch.Tensor


def bytes_per_transition(obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> int:
    obs_bytes = int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
    return 2 * obs_bytes + 8 + 4 + 4


class ReplayBuffer:
    """Uniform replay: a fixed-capacity ring, oldest transitions overwritten first."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype,
                 device: torch.device | str = "cpu") -> None:
        self.capacity, self.device = capacity, torch.device(device)
        dt = _TORCH_DTYPE[np.dtype(obs_dtype)]
        self._cols = Batch(
            torch.empty((capacity, *obs_shape), dtype=dt, device=self.device),
            torch.empty(capacity, dtype=torch.int64, device=self.device),
            torch.empty(capacity, dtype=torch.float32, device=self.device),
            torch.empty(capacity, dtype=torch.float32, device=self.device),
            torch.empty((capacity, *obs_shape), dtype=dt, device=self.device),
        )
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, items: Transitions, priorities: np.ndarray | None = None) -> None:
        n = len(items)
        if n == 0:
            return
        if n > self.capacity:  # only the newest fit
            items = Transitions(*(col[-self.capacity:] for col in items))
            n = self.capacity
        first = min(n, self.capacity - self._next)
        for dst, src in zip(self._cols, items, strict=True):
            src_t = torch.from_numpy(np.ascontiguousarray(src))
            dst[self._next:self._next + first].copy_(src_t[:first])
            if first < n:
                dst[:n - first].copy_(src_t[first:])
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, n: int) -> tuple[Batch, torch.Tensor, torch.Tensor | None]:
        """A uniform batch, its keys (slots) and importance weights (None: all equal)."""
        keys = torch.randint(0, self._size, (n,), device=self.device)
        return Batch(*(col.index_select(0, keys) for col in self._cols)), keys, None

    def update_priorities(self, keys: torch.Tensor, priorities: torch.Tensor) -> None:
        """Uniform sampling ignores priorities."""

    def can_sample(self, n: int) -> bool:
        return self._size >= n


class StreamBuffer:
    """No replay: a FIFO that yields each transition once, oldest first."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._queue: list[Transitions] = []
        self._head = 0  # consumed rows of _queue[0]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, items: Transitions, priorities: np.ndarray | None = None) -> None:
        if len(items):
            self._queue.append(items)
            self._size += len(items)

    def can_sample(self, n: int) -> bool:
        return self._size >= n

    def sample(self, n: int) -> tuple[Batch, torch.Tensor, torch.Tensor | None]:
        parts = []
        need = n
        while need:
            head = self._queue[0]
            take = min(need, len(head) - self._head)
            parts.append(Transitions(*(c[self._head:self._head + take] for c in head)))
            self._head += take
            need -= take
            if self._head == len(head):
                self._queue.pop(0)
                self._head = 0
        self._size -= n
        items = Transitions.concat(parts)
        batch = Batch(*(torch.from_numpy(np.ascontiguousarray(c)).to(self.device)
                        for c in items))
        return batch, torch.arange(n), None

    def update_priorities(self, keys: torch.Tensor, priorities: torch.Tensor) -> None:
        """A stream has nothing to re-prioritize."""
