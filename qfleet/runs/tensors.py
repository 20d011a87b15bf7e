"""How replay components save, restore and count what they hold.

Each component (storages, the frame ring, samplers, the sum tree) declares its own
`state_dict` / `load_state_dict` / `nbytes`, so a saved replay is explicit data: CPU tensors
and numbers under names the component chose, restored into preallocated device tensors.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Persistent(Protocol):
    """Its contents as CPU tensors and numbers (for `--resume` and learner failover), and
    the device bytes it holds (for the disk check and `qfleet bench replay`)."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def nbytes(self) -> int: ...


def saved(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy of `tensor`, never the tensor itself: a state is read under the learner's
    lock but serialized after it, while a CPU learner goes on writing into its tensors."""
    return tensor.detach().to("cpu", copy=True)


def tensors_nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def load_tensor(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    """Copy a saved tensor into a preallocated one. A shape from another configuration is
    refused with ValueError (the learner then refills instead)."""
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"saved replay's {name} has shape {tuple(src.shape)}, "
                         f"this run {tuple(dst.shape)}")
    dst.copy_(src)
