"""Bellman targets and the loss, against numbers computed by hand."""

import pytest
import torch

from qfleet.learner.loss import bellman_target, dqn_loss, td_loss

GAMMA = 0.9


def test_course_target_with_done_flag():
    # r + γ·max_a Q(s',a)·(1−done): rows (r=1, not done), (r=2, done)
    reward = torch.tensor([1.0, 2.0])
    done = torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[0.5, 3.0], [10.0, -1.0]])
    target = bellman_target(reward, GAMMA * (1 - done), next_q)
    assert target.tolist() == pytest.approx([1.0 + 0.9 * 3.0, 2.0])


def test_truncation_still_bootstraps():
    # A time-limit truncation is not a terminal state: the discount stays γ.
    reward = torch.tensor([1.0])
    truncated_discount = torch.tensor([GAMMA])  # terminated=False although the episode ended
    target = bellman_target(reward, truncated_discount, torch.tensor([[2.0, 4.0]]))
    assert target.item() == pytest.approx(1.0 + 0.9 * 4.0)


def test_nstep_target_uses_gamma_to_the_n():
    # 3-step: R = 1 + 0.9·0 + 0.81·2 = 2.62, bootstrap with γ³ = 0.729 · max Q = 0.729·5
    reward = torch.tensor([1.0 + 0.81 * 2.0])
    target = bellman_target(reward, torch.tensor([GAMMA**3]), torch.tensor([[5.0, 1.0]]))
    assert target.item() == pytest.approx(2.62 + 0.729 * 5.0)


def test_double_dqn_evaluates_online_argmax_with_target_net():
    next_online = torch.tensor([[1.0, 9.0, 0.0]])  # online picks action 1
    next_target = torch.tensor([[7.0, 2.0, 8.0]])  # target's own max would be 8
    target = bellman_target(torch.tensor([0.5]), torch.tensor([GAMMA]), next_target, next_online)
    assert target.item() == pytest.approx(0.5 + 0.9 * 2.0)


def test_td_loss_mse_and_huber():
    q = torch.tensor([1.0, 0.0])
    target = torch.tensor([3.0, 0.5])
    mse, td = td_loss(q, target, "mse")
    assert mse.item() == pytest.approx((4.0 + 0.25) / 2)
    assert td.tolist() == pytest.approx([2.0, 0.5])
    huber, _ = td_loss(q, target, "huber")
    assert huber.item() == pytest.approx(((2.0 - 0.5) + 0.5 * 0.25) / 2)
    weighted, _ = td_loss(q, target, "mse", torch.tensor([0.0, 2.0]))
    assert weighted.item() == pytest.approx(0.5 / 2)


def test_dqn_loss_gradient_only_through_taken_action():
    net = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    obs = torch.tensor([[1.0, 2.0]])
    loss, extras = dqn_loss(net, net, obs, torch.tensor([0]), torch.tensor([1.0]),
                            torch.tensor([0.0]), obs, double=False, kind="mse")
    # Q(s,0) = 1, target = 1 (terminal): zero TD error.
    assert loss.item() == pytest.approx(0.0)
    assert extras["mean_q"].item() == pytest.approx(1.0)
    loss.backward()
    assert net.weight.grad[1:].abs().sum().item() == 0.0
