"""The Learner: replay, online and target networks, Adam, and the counters a run resumes from.

Plain Python, no Ray: `add(chunk)` stores transitions, `step(sample())` does one update,
`get_weights()` hands out a versioned CPU copy. When to update and when to take more data
is the `RateLimiter`'s call (`rate_limiter.py`); the means the driver reads are the
`StatsWindow`'s (`tally.py`). The Ray wrapper (`worker.py`) runs the loop and feeds `add()`
from actors.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from qfleet.config import Config
from qfleet.devices import cuda_missing_reason
from qfleet.envs import EnvSpec
from qfleet.errors import LearnerError
from qfleet.learner.graphed import GraphedUpdate
from qfleet.learner.loss import dqn_loss
from qfleet.learner.replay import make_replay, replay_bytes_per_item
from qfleet.networks import build_q_network
from qfleet.runs.tensors import saved
from qfleet.stats import Counters
from qfleet.transitions import Chunk, Episode, uses_frame_refs


def pick_device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise LearnerError("learner.device: cuda requested but no GPU is visible to the "
                           f"learner ({cuda_missing_reason()})")
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def check_replay_fits(config: Config, spec: EnvSpec, device: torch.device) -> None:
    """Refuse a replay that cannot fit in the learner device's free memory."""
    if config.replay.kind == "none":
        return
    need = config.replay.capacity * replay_bytes_per_item(
        spec.obs_shape, spec.obs_dtype, uses_frame_refs(config, spec),
        config.replay.kind == "prioritized")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    # Leave a quarter for the networks, the batches and everything else on the machine.
    if need > 0.75 * free:
        raise LearnerError(
            f"replay.capacity: {config.replay.capacity} transitions need {need / 2**30:.1f} GiB "
            f"but the learner's {device.type} has {free / 2**30:.1f} GiB free")


def make_adam(params: Any, lr: float, eps: float, device: torch.device) -> torch.optim.Adam:
    """Fused Adam: one kernel per step, not one per tensor (faster on CPU too: measured by
    `qfleet bench learner`)."""
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=device.type in ("cuda", "cpu"))


def frame_window(chunk_steps: int, n_step: int, stack: int) -> int:
    """Frames per stream the learner must still resolve: a chunk's own (two per step at
    worst, with resets) plus the n-step and stack look-back; a power of two for cheap mod."""
    need = 2 * chunk_steps + n_step + stack + 4
    return 1 << (need - 1).bit_length()


class Sample(NamedTuple):
    """One sampled batch: the loss's tensors, their replay keys, importance weights."""

    batch: Any
    keys: torch.Tensor
    weights: Any


class UpdateMetrics(NamedTuple):
    """What one update measured, as device tensors (read on the host only when pulled)."""

    loss: torch.Tensor
    mean_q: torch.Tensor


class Learner:
    def __init__(self, config: Config, spec: EnvSpec, device: torch.device | str = "cpu") -> None:
        self.config, self.spec = config, spec
        self.device = torch.device(device)
        lc = config.learner
        torch.manual_seed(config.env.seed)
        self.online = build_q_network(config, spec).to(self.device)
        self.target = (self.online if lc.target_update == "none"
                       else copy.deepcopy(self.online).requires_grad_(False))
        self.optimizer = make_adam(self.online.parameters(), lc.lr, lc.adam_eps, self.device)
        rc, a = config.replay, config.actors
        self.replay = make_replay(
            rc.kind, rc.capacity, spec.obs_shape, spec.obs_dtype, self.device,
            frame_refs=uses_frame_refs(config, spec),
            num_streams=a.stream_slots,
            window=frame_window(a.chunk_steps, lc.n_step, spec.obs_shape[0]),
            alpha=rc.alpha, beta0=rc.beta0, beta_steps=rc.beta_steps)
        self.updates = 0
        self.env_steps = 0
        self.transitions = 0
        self.episodes = 0
        self.version = 0
        self.nonfinite_skipped = 0
        self.nonfinite_streak = 0
        self._prefetch = self.device.type == "cuda" and config.replay.kind != "none"
        self._prefetched: tuple | None = None
        self._graphed: GraphedUpdate | None = None  # made at the first update (see `step`)
        self.fault_hook: Callable[[torch.Tensor], torch.Tensor] | None = None
        """Test hook: may replace the loss (e.g. with NaN) before the finiteness check."""

    # -- data in -------------------------------------------------------------------------
    def add(self, chunk: Chunk) -> list[Episode]:
        """Store a chunk's transitions and count what the fleet did; its finished episodes."""
        self.replay.add(chunk.transitions, chunk.frames)
        self.env_steps += chunk.env_steps
        self.transitions += len(chunk.transitions)
        self.episodes += len(chunk.episodes)
        return chunk.episodes

    # -- learning ------------------------------------------------------------------------
    def sample(self) -> Sample:
        """The next batch (on a GPU, the one already queued during the last update)."""
        sample = self._prefetched or Sample(*self.replay.sample(self.config.learner.batch_size))
        self._prefetched = None
        return sample

    def step(self, sample: Sample) -> UpdateMetrics | None:
        """One gradient update on `sample`; None when a non-finite loss skipped it."""
        lc = self.config.learner
        batch, keys, weights = sample
        if self._use_graph():
            return self._graphed_step(batch, keys, weights)
        loss, extras = dqn_loss(self.online, self.target, *batch, double=lc.double_dqn,
                                kind=lc.loss, weights=weights)
        if self._prefetch:
            # On a GPU, queue the next batch's gathers before the one host sync below, so
            # sampling runs while we wait (its priorities are one update old, as in Ape-X).
            self._prefetched = Sample(*self.replay.sample(lc.batch_size))
        if self.fault_hook is not None:
            loss = self.fault_hook(loss)
        if not torch.isfinite(loss):
            self._skipped_nonfinite()
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if lc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.online.parameters(), lc.grad_clip)
        self.optimizer.step()
        return self._after_update(loss, extras, keys)

    def _use_graph(self) -> bool:
        """A CUDA graph on a GPU with a replay (fixed batch shapes), unless a test hook
        must see the loss on the host first."""
        lc = self.config.learner
        if not (lc.cuda_graph and self.device.type == "cuda"
                and self.config.replay.kind != "none" and self.fault_hook is None):
            if self._graphed is not None:
                self._graphed.release()
                self._graphed = None
            return False
        if self._graphed is None:
            self._graphed = GraphedUpdate(self.online, self.target, self.optimizer,
                                          double=lc.double_dqn, kind=lc.loss,
                                          grad_clip=lc.grad_clip)
        return True

    def _graphed_step(self, batch: Any, keys: torch.Tensor,
                      weights: Any) -> UpdateMetrics | None:
        """`step` with the update replayed as a CUDA graph: Adam skips a non-finite loss on
        the device, and the host learns of it after queueing the next batch's sampling."""
        assert self._graphed is not None
        loss, extras, skipped = self._graphed(batch, weights)
        if self._prefetch:
            self._prefetched = Sample(*self.replay.sample(self.config.learner.batch_size))
        if bool(skipped):
            self._skipped_nonfinite()
            return None
        return self._after_update(loss, extras, keys)

    def _skipped_nonfinite(self) -> None:
        """An update skipped for a NaN/inf loss (the driver stops the run after
        `learner.max_nonfinite` in a row; `_after_update` ends the streak)."""
        self.nonfinite_skipped += 1
        self.nonfinite_streak += 1

    def _after_update(self, loss: torch.Tensor, extras: dict[str, torch.Tensor],
                      keys: torch.Tensor) -> UpdateMetrics:
        self.nonfinite_streak = 0
        self.replay.update_priorities(keys, extras["td_abs"])
        self.updates += 1
        self.replay.anneal(self.updates)
        self._sync_target()
        return UpdateMetrics(loss.detach(), extras["mean_q"])

    def _sync_target(self) -> None:
        lc = self.config.learner
        if lc.target_update == "hard" and self.updates % lc.target_update_every == 0:
            self.target.load_state_dict(self.online.state_dict())
        elif lc.target_update == "polyak":
            with torch.no_grad():
                for t, o in zip(self.target.parameters(), self.online.parameters(), strict=True):
                    t.lerp_(o, lc.tau)

    # -- data out ------------------------------------------------------------------------
    def get_weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        """A new version of the online weights, as CPU tensors any actor can load."""
        self.version += 1
        return self.version, {k: v.detach().to("cpu", copy=True)
                              for k, v in self.online.state_dict().items()}

    @property
    def counters(self) -> Counters:
        return Counters(self.updates, self.env_steps, self.transitions, self.episodes,
                        self.version)

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "network": _to_cpu(self.online.state_dict()),
            "target": _to_cpu(self.target.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "counters": self.counters.to_dict(),
        }

    def replay_state(self) -> dict[str, Any] | None:
        """The replay's contents, for a resume that continues where it was (None: a stream,
        which keeps nothing worth saving)."""
        return self.replay.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state. Without `network` (a learner restarted before
        the run's first checkpoint) only the counters and the replay are taken."""
        try:
            self.replay.load_state_dict(state.get("replay"))
        except ValueError as err:  # e.g. capacity overridden on resume: refill instead
            warnings.warn(f"saved replay not restored: {err}", stacklevel=2)
        if "network" in state:
            self.online.load_state_dict(state["network"])
            if self.target is not self.online:
                self.target.load_state_dict(state["target"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self._graphed is not None:  # its graph holds the replaced Adam state
                self._graphed.release()
                self._graphed = None
            # The optimizer's state carries the saved run's lr: this run's config says what
            # it is now (a resume with learner.lr=..., a PBT trial given a perturbed one).
            # `capturable` was the saving learner's CUDA graph's (a CPU learner refuses it).
            for group in self.optimizer.param_groups:
                group["lr"], group["eps"] = self.config.learner.lr, self.config.learner.adam_eps
                group["capturable"] = False
        c = Counters.from_dict(state["counters"])
        self.updates, self.env_steps, self.version = c.updates, c.env_steps, c.version
        self.transitions, self.episodes = c.transitions, c.episodes
        self.replay.anneal(self.updates)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return saved(obj)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
