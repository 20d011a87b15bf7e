"""The actor's greedy actions: its acting copy of the Q-network on the CPU or on a GPU.

On a CPU the network runs only for the envs that act greedily (ε-greedy draws the rest).
On a GPU one batched forward costs about the same whatever the rows, and is bound by the
host launching its ~20 kernels, not by the GPU: so every row of a batch goes through one
CUDA graph, captured once per batch size (an actor sees one or two), and the actor's
core is left to the emulator.
"""

from __future__ import annotations

import numpy as np
import torch

from qfleet.devices import cuda_missing_reason
from qfleet.networks import QNetwork, resample_noise

MAX_GRAPHS = 4
"""Batch sizes captured at most; any other size runs eagerly (an actor sees one or two)."""
WARMUP = 2
"""Eager calls per batch size before its capture (cuDNN picks its kernels lazily)."""


def acting_device(wanted: str) -> tuple[torch.device, str | None]:
    """The device an actor acts on, and a note when it could not have the one it was
    placed for: placement gave it a GPU share, but torch in its process sees no GPU."""
    if wanted != "cuda":
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device("cuda"), None
    return torch.device("cpu"), (f"actors.device: cuda, but {cuda_missing_reason()}: "
                                 "acting on the CPU")


class GreedyActions:
    """`__call__(obs, rows)`: argmax-Q actions for `obs[rows]`, as a numpy array.

    `capture=False` runs the GPU path (whole batch, static buffers) eagerly: for the tests
    on a CPU, and the reference the captured graphs must match.
    """

    def __init__(self, net: QNetwork, device: torch.device, capture: bool = True) -> None:
        self.net, self.device = net, device
        self.whole_batch = device.type == "cuda" or not capture
        self.capture = capture and device.type == "cuda"
        self._graphs: dict[tuple[int, ...], _Graphed] = {}

    def __call__(self, obs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if not self.whole_batch:
            x = torch.from_numpy(obs if rows.size == len(obs) else obs[rows])
            with torch.inference_mode():
                if self.net.noisy:  # new noise every vector step (noisy nets explore)
                    resample_noise(self.net)
                return self.net(x).argmax(dim=1).numpy()
        shape = obs.shape
        graphed = self._graphs.get(shape)
        if graphed is None:
            graphed = _Graphed(self.net, shape, obs.dtype, self.device, self.capture)
            if len(self._graphs) < MAX_GRAPHS:
                self._graphs[shape] = graphed
        return graphed(obs)[rows]

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """New weights, copied into the network's own tensors: the captured graphs read
        them from there."""
        self.net.load_state_dict(state)


class _Graphed:
    """One batch shape: a pinned host buffer, its device copy, and the forward's graph."""

    def __init__(self, net: QNetwork, shape: tuple[int, ...], dtype: np.dtype,
                 device: torch.device, capture: bool) -> None:
        self.net, self.capture = net, capture
        pin = device.type == "cuda"
        self.host_in = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype,
                                   pin_memory=pin)
        self.static_in = torch.empty_like(self.host_in, device=device)
        self.host_out = torch.empty(shape[0], dtype=torch.int64, pin_memory=pin)
        self.static_out: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def _forward(self) -> torch.Tensor:
        with torch.inference_mode():
            if self.net.noisy:  # inside the graph: each replay draws new noise
                resample_noise(self.net)
            return self.net(self.static_in).argmax(dim=1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.host_in.numpy()[...] = obs
        self.static_in.copy_(self.host_in, non_blocking=True)
        self.calls += 1
        if not self.capture:
            self.static_out = self._forward()
        elif self.calls <= WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.static_out = self._forward()
            torch.cuda.current_stream().wait_stream(side)
        else:
            if self.graph is None:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.static_out = self._forward()
                self.graph = graph
            self.graph.replay()
        assert self.static_out is not None
        self.host_out.copy_(self.static_out)  # the one sync of a step
        return self.host_out.numpy().copy()
