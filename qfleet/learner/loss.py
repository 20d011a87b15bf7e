"""The Bellman loss, as pure functions of tensors.

The course's target is r + γ·max_a Q(s', a)·(1 − done). Transitions carry
`discount` = γ^k·(1 − terminated), which folds n-step returns and time-limit truncation
(no cut: it still bootstraps) into the same formula. Double DQN (van Hasselt et al. 2016)
picks the action with the online network and evaluates it with the target network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def dqn_loss(online: torch.nn.Module, target_net: torch.nn.Module, obs: torch.Tensor,
             action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
             next_obs: torch.Tensor, *, double: bool, kind: str,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss on one batch, with extras: |TD| (future priorities) and the mean taken Q."""
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
