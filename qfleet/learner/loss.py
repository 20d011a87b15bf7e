"""The Bellman loss, as pure functions of tensors.

The course's target is r + γ·max_a Q(s', a)·(1 − done). Transitions carry
`discount` = γ^k·(1 − terminated), which folds n-step returns and time-limit truncation
(no cut: it still bootstraps) into the same formula. Double DQN (van Hasselt et al. 2016)
picks the action with the online network and evaluates it with the target network.

The distributional losses keep the same target, per atom: C51 (Bellemare et al. 2017)
moves each target atom r + discount·z_j onto the fixed support and takes the
cross-entropy; QR-DQN (Dabney et al. 2018) regresses quantiles on the target's quantiles
with the quantile Huber loss. Their per-transition loss is the priority, as in Rainbow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qfleet.networks import QNetwork, resample_noise


def bellman_target(reward: torch.Tensor, discount: torch.Tensor, next_q_target: torch.Tensor,
                   next_q_online: torch.Tensor | None = None) -> torch.Tensor:
    """r + discount · Q_target(s', a*), a* = argmax of the online net (double) or the target."""
    if next_q_online is None:
        best = next_q_target.max(dim=1).values
    else:
        a_star = next_q_online.argmax(dim=1, keepdim=True)
        best = next_q_target.gather(1, a_star).squeeze(1)
    return reward + discount * best


def td_loss(q_taken: torch.Tensor, target: torch.Tensor, kind: str = "mse",
            weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared (or Huber) TD error, optionally importance-weighted; also |TD|."""
    td = target - q_taken
    per_item = td.pow(2) if kind == "mse" else F.huber_loss(
        q_taken, target, reduction="none", delta=1.0)
    if weights is not None:
        per_item = per_item * weights
    return per_item.mean(), td.detach().abs()


def project_onto_support(atoms: torch.Tensor, probs: torch.Tensor,
                         support: torch.Tensor) -> torch.Tensor:
    """C51's projection: the distribution with mass `probs[b, i]` at `atoms[b, i]` moved
    onto the fixed, evenly spaced `support`, each atom split between its two neighbours
    in proportion to its distance (atoms beyond the support go to its ends)."""
    n = support.numel()
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (n - 1)
    # Each atom's place on the support in units of its spacing, and its two neighbours
    # there: two scatters of [batch, atoms], not a [batch, atoms, atoms] hat function
    # (half of a CartPole update's time went there). No data-dependent shapes: it still
    # fits in one CUDA graph.
    place = ((atoms.clamp(v_min, v_max) - v_min) / delta).clamp(0, n - 1)
    lower = place.floor()
    upper_share = place - lower  # 0 when an atom falls on a support point: all to `lower`
    projected = probs.new_zeros(probs.shape[0], n)
    projected.scatter_add_(1, lower.long(), probs * (1.0 - upper_share))
    projected.scatter_add_(1, place.ceil().long(), probs * upper_share)
    return projected


def quantile_huber(quantiles: torch.Tensor, target: torch.Tensor,
                   kappa: float = 1.0) -> torch.Tensor:
    """QR-DQN's loss per transition: Σ_i mean_j |τ̂_i − 1{u_ij < 0}|·L_κ(u_ij)/κ, with
    u_ij = target_j − quantile_i and τ̂_i = (2i + 1)/(2N) the quantile midpoints."""
    n = quantiles.shape[1]
    tau = (torch.arange(n, device=quantiles.device, dtype=quantiles.dtype) + 0.5) / n
    u = target.unsqueeze(1) - quantiles.unsqueeze(2)  # [batch, i, j]
    huber = torch.where(u.abs() <= kappa, 0.5 * u.pow(2), kappa * (u.abs() - 0.5 * kappa))
    weight = (tau.view(1, -1, 1) - (u.detach() < 0).to(u.dtype)).abs()
    return (weight * huber / kappa).mean(dim=2).sum(dim=1)


def _distributional_loss(online: QNetwork, target_net: QNetwork, obs: torch.Tensor,
                         action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                         next_obs: torch.Tensor, *, double: bool,
                         weights: torch.Tensor | None
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rows = torch.arange(obs.shape[0], device=obs.device)
    taken = online.distribution(obs)[rows, action.long()]  # [batch, atoms]
    with torch.no_grad():
        next_target = target_net.distribution(next_obs)
        chooser = online if double else target_net
        a_star = chooser(next_obs).argmax(dim=1)
        best = next_target[rows, a_star]
        if online.kind == "c51":
            support = online.support.to(taken.dtype)
            atoms = reward.unsqueeze(1) + discount.unsqueeze(1) * support.unsqueeze(0)
            wanted = project_onto_support(atoms, best.exp(), support)
        else:
            wanted = reward.unsqueeze(1) + discount.unsqueeze(1) * best
    if online.kind == "c51":
        per_item = -(wanted * taken).sum(dim=1)
        mean_q = (taken.detach().exp() * online.support).sum(dim=1).mean()
    else:
        per_item = quantile_huber(taken, wanted)
        mean_q = taken.detach().mean()
    loss = (per_item * weights).mean() if weights is not None else per_item.mean()
    return loss, {"td_abs": per_item.detach(), "mean_q": mean_q}


def dqn_loss(online: torch.nn.Module, target_net: torch.nn.Module, obs: torch.Tensor,
             action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
             next_obs: torch.Tensor, *, double: bool, kind: str,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss on one batch, with extras: the priorities (|TD|, or a distributional learner's
    per-transition loss) and the mean taken Q. Noisy networks get new noise first (once
    per update, online and target), also inside the learner's CUDA graph."""
    if getattr(online, "noisy", False):
        resample_noise(online)
        if target_net is not online:
            resample_noise(target_net)
    if getattr(online, "kind", "none") != "none":
        return _distributional_loss(online, target_net, obs, action, reward, discount,
                                    next_obs, double=double, weights=weights)
    q = online(obs)
    q_taken = q.gather(1, action.long().unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        if double:
            # One forward pass of the online net over s and s' would be cheaper, but the
            # online net's s' values must not carry gradient; a no-grad pass keeps it simple.
            next_online = online(next_obs)
            next_target = next_online if target_net is online else target_net(next_obs)
        else:
            next_online = None
            next_target = target_net(next_obs)
        target = bellman_target(reward, discount, next_target, next_online)
    loss, td_abs = td_loss(q_taken, target, kind, weights)
    return loss, {"td_abs": td_abs, "mean_q": q_taken.detach().mean()}
