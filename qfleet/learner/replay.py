"""Replay on the learner's device: storage (how transitions are kept) + a sampler (which).

`ReplayBuffer(storage, sampler)` is a ring of slots; prioritized or uniform is only the
sampler. Two storages: `DenseStorage` keeps observations as given (vector observations);
`FrameStorage` keeps each Atari frame once and rebuilds stacks by index at sample time
(one 84×84 frame per transition instead of two 4×84×84 stacks; `qfleet bench replay`
measures the bytes). `StreamBuffer` is the course's barebone "no replay": each transition
learned from once, in arrival order.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from qfleet.learner.sampling import PrioritizedSampler, UniformSampler
from qfleet.runs.tensors import Persistent, load_tensor, saved, tensors_nbytes
from qfleet.transitions import Frames, Transitions

# Chunks arrive from Ray's object store as read-only arrays; they are only ever read here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_TORCH_DTYPE = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32,
                np.dtype(np.int64): torch.int64}


class Batch(NamedTuple):
    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_obs: torch.Tensor


def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)


class Storage(Persistent, Protocol):
    def write(self, slots: torch.Tensor, items: Transitions, frames: Frames | None) -> None: ...
    def gather(self, slots: torch.Tensor) -> Batch: ...
    def valid(self, slots: torch.Tensor) -> torch.Tensor | None: ...


class Sampler(Persistent, Protocol):
    device: torch.device

    def on_insert(self, slots: torch.Tensor) -> None: ...
    def sample(self, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def update(self, slots: torch.Tensor, td_abs: torch.Tensor) -> None: ...
    def step(self, updates: int) -> None: ...
    def invalidate(self, slots: torch.Tensor, keep: torch.Tensor) -> None: ...


class DenseStorage:
    """Observations stored as they come, one row per transition and column."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype,
                 device: torch.device) -> None:
        dt = _TORCH_DTYPE[np.dtype(obs_dtype)]
        self.cols = Batch(
            torch.zeros((capacity, *obs_shape), dtype=dt, device=device),
            torch.zeros(capacity, dtype=torch.int64, device=device),
            torch.zeros(capacity, dtype=torch.float32, device=device),
            torch.zeros(capacity, dtype=torch.float32, device=device),
            torch.zeros((capacity, *obs_shape), dtype=dt, device=device),
        )

    @staticmethod
    def bytes_per_item(obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> int:
        return 2 * int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize + 8 + 4 + 4

    def write(self, slots: torch.Tensor, items: Transitions, frames: Frames | None) -> None:
        for dst, src in zip(self.cols, items, strict=True):
            dst[slots] = _tensor(src, dst.device)

    def gather(self, slots: torch.Tensor) -> Batch:
        return Batch(*(col.index_select(0, slots) for col in self.cols))

    def valid(self, slots: torch.Tensor) -> torch.Tensor | None:
        """Dense rows are always whole."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {name: saved(col) for name, col in zip(Batch._fields, self.cols, strict=True)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, col in zip(Batch._fields, self.cols, strict=True):
            load_tensor(col, state[name], name)

    def nbytes(self) -> int:
        return tensors_nbytes(*self.cols)


class FrameRing:
    """Every Atari frame once, in a ring indexed by global write count, plus a table from
    (stream, sequence number) to ring index for the frames a stack may still refer to.

    Indices are global write counts (row = index mod ring size), so a stack whose frames
    were overwritten is detected at sample time and never returned.
    """

    def __init__(self, size: int, frame_shape: tuple[int, ...], num_streams: int,
                 window: int, device: torch.device) -> None:
        self.size, self.window = size, window
        self.frames = torch.zeros((size + 1, *frame_shape), dtype=torch.uint8,
                                  device=device)  # the last row stays zero: padding
        self.writes = 0
        self.table = torch.full((num_streams, window), -1, dtype=torch.int64, device=device)
        self.table_seq = torch.full((num_streams, window), -1, dtype=torch.int64, device=device)

    def write(self, frames: Frames) -> None:
        dev = self.frames.device
        k = len(frames)
        if not k:
            return
        idx = self.writes + torch.arange(k, device=dev)
        self.frames[idx % self.size] = _tensor(frames.frames, dev)
        stream, seq = _tensor(frames.stream, dev), _tensor(frames.seq, dev)
        self.table[stream, seq % self.window] = idx
        self.table_seq[stream, seq % self.window] = seq
        self.writes += k

    def resolve(self, refs: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
        """(stream, seq, depth) rows -> ring indices of the stack, -1 for zero padding."""
        stream, seq, depth = refs[:, 0], refs[:, 1], refs[:, 2]
        seqs = seq[:, None] - back[None, :]  # [N, stack], oldest first
        col = seqs % self.window
        idx = self.table[stream[:, None], col]
        found = self.table_seq[stream[:, None], col] == seqs
        in_episode = back[None, :] < depth[:, None]
        idx = torch.where(in_episode, idx, torch.full_like(idx, -1))
        # A frame that should be there but is not (never arrived): poison the stack.
        missing = in_episode & ~found
        return torch.where(missing, torch.full_like(idx, -(2**62)), idx)

    def stacks(self, idx: torch.Tensor) -> torch.Tensor:
        rows = torch.where(idx < 0, torch.full_like(idx, self.size), idx % self.size)
        return self.frames[rows]  # [B, stack, H, W]

    def intact(self, oldest: torch.Tensor) -> torch.Tensor:
        """Whether stacks whose oldest frame index is `oldest` are still in the ring."""
        return (oldest >= 0) & (self.writes - oldest <= self.size)

    def state_dict(self) -> dict[str, Any]:
        return {"frames": saved(self.frames), "writes": self.writes,
                "table": saved(self.table), "table_seq": saved(self.table_seq)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("frames", "table", "table_seq"):
            load_tensor(getattr(self, name), state[name], name)
        self.writes = int(state["writes"])

    def nbytes(self) -> int:
        return tensors_nbytes(self.frames, self.table, self.table_seq)


class FrameStorage:
    """Transitions hold the ring indices of their two stacks; the frames live once in a
    `FrameRing`."""

    _COLUMNS = ("obs_idx", "next_idx", "oldest", "action", "reward", "discount")

    def __init__(self, capacity: int, frame_shape: tuple[int, ...], stack: int,
                 num_streams: int, window: int, device: torch.device) -> None:
        self.stack = stack
        # Frames outnumber transitions by one per episode, and a stack may reach back
        # `window` frames of its stream; the slack keeps live stacks intact.
        size = int(capacity * 1.02) + 2 * num_streams * window + 64
        self.ring = FrameRing(size, frame_shape, num_streams, window, device)
        self.obs_idx = torch.full((capacity, stack), -1, dtype=torch.int64, device=device)
        self.next_idx = torch.full((capacity, stack), -1, dtype=torch.int64, device=device)
        self.oldest = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.action = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.reward = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.discount = torch.zeros(capacity, dtype=torch.float32, device=device)
        self._back = torch.arange(stack - 1, -1, -1, device=device)  # oldest..newest offsets

    @staticmethod
    def bytes_per_item(frame_bytes: int, stack: int) -> int:
        # One frame per transition (the ring's small slack aside), 2×stack int64 indices,
        # oldest-index, action, reward, discount.
        return frame_bytes + 2 * stack * 8 + 8 + 8 + 4 + 4

    def write(self, slots: torch.Tensor, items: Transitions, frames: Frames | None) -> None:
        assert frames is not None, "frame storage needs the chunk's frames"
        dev = self.action.device
        self.ring.write(frames)
        obs_idx = self.ring.resolve(_tensor(items.obs, dev), self._back)
        next_idx = self.ring.resolve(_tensor(items.next_obs, dev), self._back)
        self.obs_idx[slots], self.next_idx[slots] = obs_idx, next_idx
        both = torch.cat([obs_idx, next_idx], dim=1)
        big = torch.iinfo(torch.int64).max
        oldest = torch.where(both == -1, torch.full_like(both, big), both).min(dim=1).values
        self.oldest[slots] = oldest
        self.action[slots] = _tensor(items.action, dev)
        self.reward[slots] = _tensor(items.reward, dev)
        self.discount[slots] = _tensor(items.discount, dev)

    def gather(self, slots: torch.Tensor) -> Batch:
        return Batch(self.ring.stacks(self.obs_idx[slots]), self.action[slots],
                     self.reward[slots], self.discount[slots],
                     self.ring.stacks(self.next_idx[slots]))

    def valid(self, slots: torch.Tensor) -> torch.Tensor:
        return self.ring.intact(self.oldest[slots])

    def state_dict(self) -> dict[str, Any]:
        return {"ring": self.ring.state_dict(),
                **{name: saved(getattr(self, name)) for name in self._COLUMNS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._COLUMNS:
            load_tensor(getattr(self, name), state[name], name)
        self.ring.load_state_dict(state["ring"])

    def nbytes(self) -> int:
        return self.ring.nbytes() + tensors_nbytes(*(getattr(self, n) for n in self._COLUMNS))


class ReplayBuffer:
    """A fixed-capacity ring of transitions, oldest overwritten first."""

    def __init__(self, capacity: int, storage: Storage, sampler: Sampler) -> None:
        self.capacity, self.storage, self.sampler = capacity, storage, sampler
        self.device = sampler.device
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def can_sample(self, n: int) -> bool:
        return self._size >= n

    def add(self, items: Transitions, frames: Frames | None = None) -> None:
        n = len(items)
        if n == 0:
            if frames is not None and len(frames):
                self.storage.write(torch.empty(0, dtype=torch.long, device=self.device),
                                   items, frames)
            return
        if n > self.capacity:  # only the newest fit
            items = Transitions(*(col[-self.capacity:] for col in items))
            n = self.capacity
        slots = (self._next + torch.arange(n, device=self.device)) % self.capacity
        self.storage.write(slots, items, frames)
        self.sampler.on_insert(slots)
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, n: int) -> tuple[Batch, torch.Tensor, torch.Tensor | None]:
        """A batch, its slots (keys for priority updates), and importance weights."""
        keys, weights = self.sampler.sample(n, self._size)
        ok = self.storage.valid(keys)
        if ok is not None:
            # Rare: a stack whose frames were recycled. Never sample it again, and swap in
            # the newest transitions, whose frames are certainly there. Branch-free, so a
            # GPU learner never waits for the check.
            self.sampler.invalidate(keys, keep=ok)
            newest = (self._next - 1 - torch.arange(n, device=self.device)) % self.capacity
            keys = torch.where(ok, keys, newest)
        return self.storage.gather(keys), keys, weights

    def update_priorities(self, keys: torch.Tensor, td_abs: torch.Tensor) -> None:
        self.sampler.update(keys, td_abs)

    def anneal(self, updates: int) -> None:
        """Advance the sampler's schedule (prioritized replay's β) to `updates`."""
        self.sampler.step(updates)

    def nbytes(self) -> int:
        """Device bytes held by storage and sampler (the sum tree included)."""
        return self.storage.nbytes() + self.sampler.nbytes()

    def state_dict(self) -> dict[str, Any]:
        """Storage and sampler contents on the CPU, with the ring's position."""
        return {"next": self._next, "size": self._size, "capacity": self.capacity,
                "storage": self.storage.state_dict(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore saved contents; ValueError when they belong to another configuration."""
        if state is None:
            return
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"saved replay has capacity {state['capacity']}, "
                             f"this run {self.capacity}")
        try:
            self.storage.load_state_dict(state["storage"])
            self.sampler.load_state_dict(state["sampler"])
        except KeyError as err:  # another storage or sampler kind saved it
            raise ValueError(f"saved replay lacks {err}") from None
        self._next, self._size = int(state["next"]), int(state["size"])


class StreamBuffer:
    """No replay: a FIFO that yields each transition once, oldest first."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._queue: list[Transitions] = []
        self._head = 0  # consumed rows of _queue[0]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, items: Transitions, frames: Frames | None = None) -> None:
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
        return Batch(*(_tensor(c, self.device) for c in items)), torch.arange(n), None

    def update_priorities(self, keys: torch.Tensor, td_abs: torch.Tensor) -> None:
        """A stream has nothing to re-prioritize."""

    def anneal(self, updates: int) -> None:
        """A stream has no sampling schedule."""

    def nbytes(self) -> int:
        """A stream preallocates nothing on the device."""
        return 0

    def state_dict(self) -> None:
        """A stream keeps nothing worth saving: a few unlearned transitions at most."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Nothing to restore (see `state_dict`)."""


def make_replay(kind: str, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype,
                device: torch.device, *, frame_refs: bool = False, num_streams: int = 0,
                window: int = 0, alpha: float = 0.6, beta0: float = 0.4,
                beta_steps: int = 100_000) -> ReplayBuffer | StreamBuffer:
    """The replay a config asks for: `uniform`, `prioritized` or `none` (a stream)."""
    if kind == "none":
        return StreamBuffer(device)
    storage: Storage
    if frame_refs:
        storage = FrameStorage(capacity, obs_shape[1:], obs_shape[0], num_streams, window,
                               device)
    else:
        storage = DenseStorage(capacity, obs_shape, obs_dtype, device)
    sampler: Sampler = (PrioritizedSampler(capacity, device, alpha=alpha, beta0=beta0,
                                  beta_steps=beta_steps)
               if kind == "prioritized" else UniformSampler(capacity, device))
    return ReplayBuffer(capacity, storage, sampler)


def replay_bytes_per_item(obs_shape: tuple[int, ...], obs_dtype: np.dtype, frame_refs: bool,
                          prioritized: bool) -> int:
    """Device bytes one stored transition costs (what the capacity check multiplies)."""
    if frame_refs:
        frame = int(np.prod(obs_shape[1:])) * np.dtype(obs_dtype).itemsize
        base = FrameStorage.bytes_per_item(int(frame * 1.02), obs_shape[0])
    else:
        base = DenseStorage.bytes_per_item(obs_shape, obs_dtype)
    # A float64 leaf, and the inner levels 1/63 of that (64 children a node), rounded up.
    return base + (9 if prioritized else 0)
