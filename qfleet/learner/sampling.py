"""Sampling distributions over replay slots: uniform, and proportional prioritized.

Prioritized replay (Schaul et al. 2016, proportional): P(i) = p_i^α / Σ p^α, importance
weights (N·P(i))^−β normalized by the batch maximum, β annealed to 1. The sum tree lives on
the learner's device and every operation is batched over the whole sample or update — a
loop over tree levels (4 for a million slots), never over items.
"""

from __future__ import annotations

from typing import Any

import torch

from qfleet.runs.tensors import load_tensor, saved, tensors_nbytes


def linear_anneal(step: int, start: float, end: float, steps: int) -> float:
    return start + min(max(step, 0) / max(steps, 1), 1.0) * (end - start)


class SumTree:
    """Leaves hold priorities; each inner node the sum of its `FANOUT` children.

    Wide and so shallow: 3 levels over 100k leaves, 4 over a million, where a binary tree
    has 17 and 20. A batched walk costs a few tensor ops per level, and on a GPU each op is
    a kernel launch that takes longer than its arithmetic: the depth is the cost.
    """

    FANOUT = 64

    def __init__(self, capacity: int, device: torch.device | str = "cpu") -> None:
        fan = self.FANOUT
        sizes = []  # leaves first, each level padded to whole groups of `fan`
        n = max(capacity, 1)
        while True:
            n = -(-n // fan) * fan
            sizes.append(n)
            if n == fan:
                break
            n //= fan
        # float64: sums over a million leaves must still tell tiny priorities apart.
        self.levels = [torch.zeros(s, dtype=torch.float64, device=device)
                       for s in [1, *reversed(sizes)]]  # the root first, the leaves last
        self.capacity = capacity
        self._child = torch.arange(fan, device=device)

    @property
    def total(self) -> torch.Tensor:
        return self.levels[0][0]

    def leaves(self, idx: torch.Tensor) -> torch.Tensor:
        return self.levels[-1][idx]

    def set(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        node = idx.long()
        self.levels[-1][node] = values.to(torch.float64)
        # Each touched parent is summed afresh from its children: no drift, and duplicate
        # parents write the same sum, so no unique() (a device-to-host sync on a GPU).
        for parents, level in self._upward():
            node = node // self.FANOUT
            parents[node] = level.view(-1, self.FANOUT)[node].sum(1)

    def find(self, mass: torch.Tensor) -> torch.Tensor:
        """For each prefix mass u in [0, total), the leaf whose cumulative range holds u."""
        mass = mass.to(torch.float64).clone()
        node = torch.zeros(mass.shape, dtype=torch.long, device=mass.device)
        for level in self.levels[1:]:
            children = level.view(-1, self.FANOUT)[node]
            ends = children.cumsum(1)
            # The first child whose range ends past u; never, when rounding puts u at or
            # past the end, a child with no mass (an emptied or never-filled slot).
            last = torch.where(children > 0, self._child, 0).amax(1)
            pick = torch.minimum((ends <= mass[:, None]).sum(1), last)
            mass -= (ends - children).gather(1, pick[:, None]).squeeze(1)
            node = node * self.FANOUT + pick
        return node

    def _upward(self) -> zip[tuple[torch.Tensor, torch.Tensor]]:
        """(parents, children) level pairs from the leaves up to the root."""
        return zip(self.levels[-2::-1], self.levels[:0:-1], strict=True)

    def _rebuild(self) -> None:
        for parents, level in self._upward():
            sums = level.view(-1, self.FANOUT).sum(1)
            parents.zero_()
            parents[: len(sums)] = sums

    def state_dict(self) -> dict[str, Any]:
        return {"priorities": saved(self.levels[-1][: self.capacity])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.levels[-1].zero_()
        load_tensor(self.levels[-1][: self.capacity], state["priorities"], "priorities")
        self._rebuild()

    def nbytes(self) -> int:
        return tensors_nbytes(*self.levels)


class UniformSampler:
    def __init__(self, capacity: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def on_insert(self, slots: torch.Tensor) -> None:
        """Uniform sampling keeps no per-slot state."""

    def sample(self, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.randint(0, size, (n,), device=self.device), None

    def update(self, slots: torch.Tensor, td_abs: torch.Tensor) -> None:
        """Uniform sampling ignores TD errors."""

    def step(self, updates: int) -> None:
        """Nothing to anneal."""

    def invalidate(self, slots: torch.Tensor, keep: torch.Tensor) -> None:
        """Uniform sampling has no priorities to zero; the buffer swaps the slots out."""

    def state_dict(self) -> dict[str, Any]:
        """Nothing but the slots' count, which the buffer keeps."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see `state_dict`)."""

    def nbytes(self) -> int:
        return 0


class PrioritizedSampler:
    def __init__(self, capacity: int, device: torch.device | str = "cpu", *, alpha: float = 0.6,
                 beta0: float = 0.4, beta_steps: int = 100_000, eps: float = 1e-6) -> None:
        self.tree = SumTree(capacity, device)
        self.device = torch.device(device)
        self.alpha, self.beta0, self.beta_steps, self.eps = alpha, beta0, beta_steps, eps
        self.beta = beta0
        # Kept on the device: reading it back every update would stall a GPU learner.
        self.max_priority = torch.ones((), dtype=torch.float64, device=self.device)

    def on_insert(self, slots: torch.Tensor) -> None:
        """New transitions get the largest priority seen, so each is replayed soon."""
        self.tree.set(slots, (self.max_priority ** self.alpha).expand(slots.shape))

    def sample(self, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        total = self.tree.total
        # Stratified: one draw from each of n equal slices of the total mass.
        u = (torch.arange(n, device=self.device, dtype=torch.float64)
             + torch.rand(n, device=self.device, dtype=torch.float64)) * (total / n)
        slots = self.tree.find(u).clamp_(max=size - 1)
        p = self.tree.leaves(slots) / total
        weights = (size * p.clamp_min(1e-12)) ** (-self.beta)
        return slots, (weights / weights.max()).float()

    def update(self, slots: torch.Tensor, td_abs: torch.Tensor) -> None:
        priorities = td_abs.detach().double() + self.eps
        self.max_priority = torch.maximum(self.max_priority, priorities.max())
        self.tree.set(slots, priorities ** self.alpha)

    def step(self, updates: int) -> None:
        self.beta = linear_anneal(updates, self.beta0, 1.0, self.beta_steps)

    def invalidate(self, slots: torch.Tensor, keep: torch.Tensor) -> None:
        """Zero the priority of `slots` where `keep` is False (others keep theirs)."""
        self.tree.set(slots, torch.where(keep, self.tree.leaves(slots), 0.0))

    def state_dict(self) -> dict[str, Any]:
        """Priorities and their running maximum; β follows the learner's update count."""
        return {"tree": self.tree.state_dict(), "max_priority": saved(self.max_priority)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tree.load_state_dict(state["tree"])
        self.max_priority.copy_(state["max_priority"])

    def nbytes(self) -> int:
        return self.tree.nbytes() + tensors_nbytes(self.max_priority)
