"""Q-networks: the course's MLP, the Nature CNN for pixels, and an optional dueling head.

Pixel observations arrive as uint8 and are scaled inside `forward`, so they travel and are
stored at a quarter of the float size.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from qfleet.config import NetworkConfig
from qfleet.envs import EnvSpec


def mlp_torso(in_features: int, hidden: tuple[int, ...]) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(nn.Flatten(), *layers), width


def nature_cnn_torso(in_channels: int) -> tuple[nn.Module, int]:
    """Mnih et al. 2015: three conv layers and a 512-unit layer, for 84×84 inputs."""
    torso = nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
    )
    return torso, 512


class DuelingHead(nn.Module):
    """Wang et al. 2016: Q = V + A − mean(A), so the value is learned from every action."""

    def __init__(self, width: int, num_actions: int) -> None:
        super().__init__()
        self.value = nn.Linear(width, 1)
        self.advantage = nn.Linear(width, num_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adv = self.advantage(x)
        return self.value(x) + adv - adv.mean(dim=1, keepdim=True)


class QNetwork(nn.Module):
    def __init__(self, torso: nn.Module, head: nn.Module, scale_uint8: bool) -> None:
        super().__init__()
        self.torso = torso
        self.head = head
        self.scale_uint8 = scale_uint8
        self.compute_dtype = torch.float32

    def cast(self, dtype: torch.dtype) -> QNetwork:
        """Parameters and inputs in `dtype`: a bfloat16 acting copy costs a CPU with
        bfloat16 instructions well under half the time per observation."""
        self.to(dtype)
        self.compute_dtype = dtype
        return self

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(self.compute_dtype)
        if self.scale_uint8:
            x = x * (1.0 / 255.0)
        return self.head(self.torso(x))


def build_q_network(cfg: NetworkConfig, spec: EnvSpec) -> QNetwork:
    kind = cfg.kind
    if kind == "auto":
        kind = "nature_cnn" if len(spec.obs_shape) == 3 else "mlp"
    if kind == "nature_cnn":
        if len(spec.obs_shape) != 3 or spec.obs_shape[1:] != (84, 84):
            raise ValueError(f"network.kind: nature_cnn needs (C, 84, 84) observations, "
                             f"got {spec.obs_shape}")
        torso, width = nature_cnn_torso(spec.obs_shape[0])
    else:
        in_features = 1
        for d in spec.obs_shape:
            in_features *= d
        torso, width = mlp_torso(in_features, cfg.hidden)
    head: nn.Module = (DuelingHead(width, spec.num_actions) if cfg.dueling
                       else nn.Linear(width, spec.num_actions))
    return QNetwork(torso, head, scale_uint8=spec.obs_dtype == np.uint8)


def faster_dtype(net: QNetwork, obs: torch.Tensor, rounds: int = 5) -> torch.dtype:
    """float32 or bfloat16, whichever runs `net` on `obs` faster on this CPU, measured in
    alternating rounds (bfloat16 wins only where the CPU has bfloat16 instructions)."""
    models = {torch.float32: net, torch.bfloat16: copy.deepcopy(net).cast(torch.bfloat16)}
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        for model in models.values():
            model(obs)  # first call: allocator and kernel selection
        for _ in range(rounds):
            for dtype, model in models.items():
                start = time.perf_counter()
                model(obs)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return min(best, key=best.__getitem__)
