"""Q-networks: the course's MLP, the Nature CNN for pixels, an optional dueling head, and
Rainbow's parts: a distributional head (C51's categorical or QR-DQN's quantiles) and
noisy linear layers for exploration.

Every network's `forward` returns Q-values (the expected value under a distributional
head), so acting, evaluation and `Policy.q_values` read any of them alike; the loss asks
`distribution(obs)` for the per-atom output. Pixel observations arrive as uint8 and are
scaled inside `forward`, so they travel and are stored at a quarter of the float size.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qfleet.config import Config
from qfleet.envs import EnvSpec


class NoisyLinear(nn.Module):
    """Fortunato et al. 2018, factorised Gaussian: w = μ_w + σ_w ⊙ f(ε_out) f(ε_in)ᵀ,
    b = μ_b + σ_b ⊙ f(ε_out), f(x) = sign(x)·√|x|; μ ~ U(±1/√in), σ = σ₀/√in.

    The noise lives in buffers that `resample()` redraws in place (also inside a CUDA
    graph, whose RNG is graph-safe); they are not saved: weights travel without them.
    With `noisy = False` the layer is its mean path.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound,
                                                                                       bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features),
                                                    sigma0 * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma0 * bound))
        self.register_buffer("eps_in", torch.zeros(in_features), persistent=False)
        self.register_buffer("eps_out", torch.zeros(out_features), persistent=False)
        self.noisy = True
        self.resample()

    @staticmethod
    def _scaled(x: torch.Tensor) -> torch.Tensor:
        return x.sign() * x.abs().sqrt()

    def resample(self) -> None:
        with torch.no_grad():
            self.eps_in.copy_(self._scaled(torch.randn_like(self.eps_in)))
            self.eps_out.copy_(self._scaled(torch.randn_like(self.eps_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.noisy:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        bias = self.bias_mu + self.bias_sigma * self.eps_out
        return F.linear(x, weight, bias)


def resample_noise(net: nn.Module) -> None:
    """New noise in every noisy layer of `net` (actors: every vector step; the learner:
    every update, online and target networks)."""
    for layer in net.modules():
        if isinstance(layer, NoisyLinear):
            layer.resample()


def set_noise(net: nn.Module, on: bool) -> None:
    """Noise on, or every noisy layer on its mean path."""
    for layer in net.modules():
        if isinstance(layer, NoisyLinear):
            layer.noisy = on


Linear = Callable[[int, int], nn.Module]
"""Makes a linear layer (in, out): `nn.Linear`, or a noisy one."""


def mlp_torso(in_features: int, hidden: tuple[int, ...],
              linear: Linear = nn.Linear) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(nn.Flatten(), *layers), width


def nature_cnn_torso(in_channels: int, linear: Linear = nn.Linear) -> tuple[nn.Module, int]:
    """Mnih et al. 2015: three conv layers and a 512-unit layer, for 84×84 inputs."""
    torso = nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
        linear(64 * 7 * 7, 512), nn.ReLU(),
    )
    return torso, 512


class DuelingHead(nn.Module):
    """Wang et al. 2016: Q = V + A − mean(A), so the value is learned from every action;
    per atom under a distributional head (Rainbow's dueling C51)."""

    def __init__(self, width: int, num_actions: int, atoms: int = 1,
                 linear: Linear = nn.Linear) -> None:
        super().__init__()
        self.num_actions, self.atoms = num_actions, atoms
        self.value = linear(width, atoms)
        self.advantage = linear(width, num_actions * atoms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adv = self.advantage(x).view(-1, self.num_actions, self.atoms)
        value = self.value(x).view(-1, 1, self.atoms)
        return (value + adv - adv.mean(dim=1, keepdim=True)).flatten(1)


class QNetwork(nn.Module):
    """`forward(obs)`: Q-values [batch, actions]; `distribution(obs)`: [batch, actions,
    atoms] log-probabilities on `support` (C51) or quantile values (QR)."""

    def __init__(self, torso: nn.Module, head: nn.Module, scale_uint8: bool, *,
                 num_actions: int, distribution: str = "none", atoms: int = 1,
                 support: torch.Tensor | None = None) -> None:
        super().__init__()
        self.torso = torso
        self.head = head
        self.scale_uint8 = scale_uint8
        self.compute_dtype = torch.float32
        self.num_actions, self.kind, self.atoms = num_actions, distribution, atoms
        self.noisy = any(isinstance(m, NoisyLinear) for m in self.modules())
        # C51's fixed support z_1..z_N; not saved: the config says what it is.
        self.register_buffer("support", support if support is not None else torch.zeros(0),
                             persistent=False)

    def cast(self, dtype: torch.dtype) -> QNetwork:
        """Parameters and inputs in `dtype`: a bfloat16 acting copy costs a CPU with
        bfloat16 instructions well under half the time per observation. C51's support
        stays float32 (bfloat16 would move its atoms)."""
        self.to(dtype)
        self.support = self.support.float()
        self.compute_dtype = dtype
        return self

    def _out(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(self.compute_dtype)
        if self.scale_uint8:
            x = x * (1.0 / 255.0)
        return self.head(self.torso(x)).view(-1, self.num_actions, self.atoms)

    def distribution(self, obs: torch.Tensor) -> torch.Tensor:
        out = self._out(obs)
        return F.log_softmax(out.float(), dim=2) if self.kind == "c51" else out

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self._out(obs)
        if self.kind == "c51":  # in float32 also for a bfloat16 acting copy
            return (F.softmax(out.float(), dim=2) * self.support).sum(dim=2)
        if self.kind == "qr":
            return out.mean(dim=2)
        return out.squeeze(2)


def build_q_network(config: Config, spec: EnvSpec) -> QNetwork:
    """The network `config` describes (`network`, and `learner.distribution`'s head). With
    noisy nets every linear layer is noisy, the torso's too (Rainbow's, and Dopamine's
    512-unit layer); the convolutions are not."""
    cfg, lc = config.network, config.learner
    linear: Linear = nn.Linear
    if cfg.noisy:
        def linear(i: int, o: int) -> nn.Module:
            return NoisyLinear(i, o, cfg.noisy_sigma0)
    kind = cfg.kind
    if kind == "auto":
        kind = "nature_cnn" if len(spec.obs_shape) == 3 else "mlp"
    if kind == "nature_cnn":
        if len(spec.obs_shape) != 3 or spec.obs_shape[1:] != (84, 84):
            raise ValueError(f"network.kind: nature_cnn needs (C, 84, 84) observations, "
                             f"got {spec.obs_shape}")
        torso, width = nature_cnn_torso(spec.obs_shape[0], linear)
    else:
        in_features = 1
        for d in spec.obs_shape:
            in_features *= d
        torso, width = mlp_torso(in_features, cfg.hidden, linear)
    atoms = 1 if lc.distribution == "none" else lc.atoms
    head = (DuelingHead(width, spec.num_actions, atoms, linear) if cfg.dueling
            else linear(width, spec.num_actions * atoms))
    support = (torch.linspace(lc.v_min, lc.v_max, lc.atoms) if lc.distribution == "c51"
               else None)
    return QNetwork(torso, head, scale_uint8=spec.obs_dtype == np.uint8,
                    num_actions=spec.num_actions, distribution=lc.distribution, atoms=atoms,
                    support=support)


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
