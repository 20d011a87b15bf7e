"""One learner update (loss, backward, clipping, fused Adam) replayed as a CUDA graph.

On a GPU the eager update is bound by the host launching kernels (a few hundred per
update), not by the GPU's arithmetic: a captured graph replays the same kernels with one
launch (`qfleet bench learner --device cuda --no-cuda-graph` against the default shows it).

What a graph needs, and how the update provides it:
- fixed addresses: each batch is copied into static buffers; gradients are allocated once,
  inside the capture; the target network is synced in place (`load_state_dict` copies);
- no host syncs inside: a non-finite loss cannot be checked on the host before Adam, so
  it sets fused Adam's `found_inf`, which skips the step on the device (parameters and
  moments untouched, as the eager path's skip), and the host reads the flag afterwards;
- warm-up: the first `WARMUP` updates run eagerly on a side stream (they are real
  updates), so that lazily made state (Adam's moments, cuBLAS workspaces) exists before
  the capture.

Sampling and priority updates stay outside the graph: the sum tree is a few dozen
kernels, and its batches change every update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qfleet.learner.loss import dqn_loss

WARMUP = 3


class GraphedUpdate:
    """`__call__(batch, weights)` makes one update; returns (loss, extras, skipped), where
    `skipped` is a device flag (1.0: the loss was not finite and Adam did not step)."""

    def __init__(self, online: torch.nn.Module, target: torch.nn.Module,
                 optimizer: torch.optim.Adam, *, double: bool, kind: str,
                 grad_clip: float | None, capture: bool = True) -> None:
        """`capture=False`: the same update on the same buffers, run eagerly (for CPUs and
        the tests; the captured graph must match it)."""
        self.online, self.target, self.optimizer = online, target, optimizer
        self.double, self.kind, self.grad_clip = double, kind, grad_clip
        self.capture = capture
        device = next(online.parameters()).device
        self.skipped = torch.zeros((), device=device)
        # Fused Adam skips its step where found_inf is non-zero (what GradScaler uses);
        # `capturable` (set at the capture) lets its step be captured.
        optimizer.found_inf = self.skipped  # type: ignore[attr-defined]
        self._capturable = [group["capturable"] for group in optimizer.param_groups]
        self._batch: list[torch.Tensor] | None = None
        self._weights: torch.Tensor | None = None
        self._calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def __call__(self, batch: Sequence[torch.Tensor], weights: torch.Tensor | None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        self._load(batch, weights)
        self._calls += 1
        if not self.capture:
            self.optimizer.zero_grad(set_to_none=False)
            loss, extras = self._update()
        elif self._calls <= WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                loss, extras = self._update()
            torch.cuda.current_stream().wait_stream(side)
        else:
            if self._graph is None:
                self._record()
            assert self._graph is not None and self._out is not None
            self._graph.replay()
            loss, extras = self._out
        return loss, extras, self.skipped

    def _load(self, batch: Sequence[torch.Tensor], weights: torch.Tensor | None) -> None:
        if self._batch is None:
            self._batch = [t.clone() for t in batch]
            self._weights = None if weights is None else weights.clone()
            return
        for static, new in zip(self._batch, batch, strict=True):
            static.copy_(new, non_blocking=True)
        if self._weights is not None and weights is not None:
            self._weights.copy_(weights, non_blocking=True)

    def _update(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert self._batch is not None
        loss, extras = dqn_loss(self.online, self.target, *self._batch, double=self.double,
                                kind=self.kind, weights=self._weights)
        self.skipped.copy_(torch.logical_not(torch.isfinite(loss)))
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.online.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach(), extras  # holding the autograd graph would pin its nodes

    def _record(self) -> None:
        """Capture one update; its gradients are allocated in the graph's own memory."""
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:  # only now: eager steps would warn
            group["capturable"] = True
        graph = torch.cuda.CUDAGraph()
        # thread_local: the learner's other threads (Ray's, the stats calls) may go on.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._out = self._update()
        self._graph = graph

    def release(self) -> None:
        """Hand the optimizer back to eager updates (which must not see a stale flag)."""
        if getattr(self.optimizer, "found_inf", None) is self.skipped:
            del self.optimizer.found_inf  # type: ignore[attr-defined]
            for group, was in zip(self.optimizer.param_groups, self._capturable, strict=True):
                group["capturable"] = was
        self._graph = self._out = None
