"""Rainbow's parts against numbers computed by hand: C51's projection and loss, the
quantile Huber loss, the noisy layer's noise and its mean path, and the heads' expected
values."""

import math

import pytest
import torch
from torch import nn

from qfleet.config import load_config
from qfleet.envs import env_spec
from qfleet.learner.loss import dqn_loss, project_onto_support, quantile_huber
from qfleet.networks import NoisyLinear, QNetwork, build_q_network, resample_noise, set_noise

SUPPORT = torch.arange(5.0)  # 0, 1, 2, 3, 4: Δz = 1


def project(atoms, probs):
    return project_onto_support(torch.tensor([atoms]), torch.tensor([probs]), SUPPORT)[0]


def test_an_atom_between_two_support_points_is_split_by_distance():
    assert project([1.5], [1.0]).tolist() == pytest.approx([0, 0.5, 0.5, 0, 0])
    assert project([2.25], [1.0]).tolist() == pytest.approx([0, 0, 0.75, 0.25, 0])
    assert project([2.0], [1.0]).tolist() == pytest.approx([0, 0, 1, 0, 0])


def test_atoms_beyond_the_support_go_to_its_ends():
    assert project([5.7, -3.0], [0.6, 0.4]).tolist() == pytest.approx([0.4, 0, 0, 0, 0.6])


def test_the_target_distribution_r_plus_discount_z_projected():
    # r = 1, discount 0.5, uniform next distribution: atoms 1, 1.5, 2, 2.5, 3.
    reward, discount = 1.0, 0.5
    atoms = (reward + discount * SUPPORT).tolist()
    result = project(atoms, [0.2] * 5)
    assert result.tolist() == pytest.approx([0, 0.3, 0.4, 0.3, 0])
    assert result.sum().item() == pytest.approx(1.0)
    # A terminal transition (discount 0) puts all the mass at r: 2.25 -> 2 and 3.
    assert project([2.25] * 5, [0.2] * 5).tolist() == pytest.approx([0, 0, 0.75, 0.25, 0])


def test_quantile_huber_loss_by_hand():
    # θ = (0, 1), τ̂ = (0.25, 0.75), target samples (0.5, 3); κ = 1.
    # i=0: u = (0.5, 3): huber (0.125, 2.5), weight 0.25 each -> mean 0.328125
    # i=1: u = (-0.5, 2): huber (0.125, 1.5), weights (0.25, 0.75) -> mean 0.578125
    loss = quantile_huber(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 3.0]]))
    assert loss.item() == pytest.approx(0.90625)
    # Quantiles at the target's own quantiles cost nothing more than their spread.
    assert quantile_huber(torch.tensor([[2.0, 2.0]]), torch.tensor([[2.0, 2.0]])).item() == 0


class Fixed(nn.Module):
    """A head that answers the same outputs for every observation."""

    def __init__(self, out):
        super().__init__()
        self.out = nn.Parameter(torch.tensor(out))

    def forward(self, x):
        return self.out.expand(x.shape[0], -1)


def c51_net(logits, actions=2):
    return QNetwork(nn.Flatten(), Fixed(logits), False, num_actions=actions,
                    distribution="c51", atoms=5, support=SUPPORT.clone())


def test_c51_expected_value_and_loss_of_a_terminal_transition():
    net = c51_net([0.0] * 10)  # uniform over the 5 atoms for both actions
    obs = torch.zeros(1, 3)
    assert net(obs)[0].tolist() == pytest.approx([2.0, 2.0])  # mean of 0..4
    # Terminal (discount 0), r = 2.25: target mass 0.75 at 2 and 0.25 at 3, so the
    # cross-entropy against a uniform distribution is log 5.
    loss, extras = dqn_loss(net, net, obs, torch.tensor([1]), torch.tensor([2.25]),
                            torch.tensor([0.0]), obs, double=True, kind="huber")
    assert loss.item() == pytest.approx(math.log(5))
    assert extras["td_abs"].tolist() == pytest.approx([math.log(5)])  # the priority
    assert extras["mean_q"].item() == pytest.approx(2.0)


def test_qr_expected_value_is_the_mean_quantile():
    net = QNetwork(nn.Flatten(), Fixed([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]), False,
                   num_actions=2, distribution="qr", atoms=3)
    assert net(torch.zeros(1, 3))[0].tolist() == pytest.approx([1.0, 4.0])


def test_noisy_layer_noise_has_the_factorised_gaussian_statistics():
    torch.manual_seed(0)
    layer = NoisyLinear(4, 3, sigma0=0.5)
    with torch.no_grad():
        layer.weight_mu.zero_()
        layer.bias_mu.zero_()
    x = torch.ones(1, 4)
    outs = []
    for _ in range(20000):
        layer.resample()
        outs.append(layer(x)[0])
    y = torch.stack(outs)
    # y_k = σ·f(ε_out,k)·(Σ_i f(ε_in,i) + 1), σ = σ₀/√4; E f(ε)² = E|ε| = √(2/π) =: c.
    sigma, c = 0.5 / 2, math.sqrt(2 / math.pi)
    assert y.mean(dim=0).abs().max().item() < 0.02
    assert y.var(dim=0).tolist() == pytest.approx([sigma**2 * c * (4 * c + 1)] * 3, rel=0.06)
    # One ε_out per output row: outputs are uncorrelated across rows, not independent.
    assert abs(torch.corrcoef(y.T)[0, 1].item()) < 0.05
    assert set(layer.state_dict()) == {"weight_mu", "weight_sigma", "bias_mu", "bias_sigma"}


def test_the_noisy_layer_mean_path_is_deterministic():
    torch.manual_seed(1)
    layer = NoisyLinear(6, 2)
    x = torch.randn(3, 6)
    noisy = [layer(x) for _ in range(2) if layer.resample() is None]
    assert not torch.equal(noisy[0], noisy[1])
    set_noise(layer, False)
    mean = layer(x)
    layer.resample()
    assert torch.equal(mean, layer(x))
    assert torch.allclose(mean, x @ layer.weight_mu.T + layer.bias_mu)


@pytest.mark.parametrize("distribution", ["c51", "qr"])
@pytest.mark.parametrize("dueling", [False, True])
def test_built_heads_give_q_values_and_distributions(distribution, dueling):
    config = load_config(None, ["stop.env_steps=1", f"learner.distribution={distribution}",
                                "learner.atoms=11", f"network.dueling={dueling}",
                                "network.noisy=true"])
    spec = env_spec(config.env)
    net = build_q_network(config, spec)
    obs = torch.randn(7, *spec.obs_shape)
    dist = net.distribution(obs)
    assert dist.shape == (7, spec.num_actions, 11)
    if distribution == "c51":
        assert dist.exp().sum(dim=2).allclose(torch.ones(7, spec.num_actions))
        expected = (dist.exp() * torch.linspace(-10, 10, 11)).sum(dim=2)
    else:
        expected = dist.mean(dim=2)
    assert torch.allclose(net(obs), expected, atol=1e-5)
    before = net(obs)
    resample_noise(net)
    assert not torch.allclose(before, net(obs))  # the noise explores
