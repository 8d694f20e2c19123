"""Losses: the gradient penalty is zero-centred and trains E; signs of every term."""

import math

import pytest
import torch

from training import losses


def test_penalty_is_zero_centred():
    """E(x) = ½‖x‖² has ∇E = x: the penalty is mean ‖x‖², and 0 at x = 0 (a WGAN-GP
    one-centred penalty would be 1 there)."""
    energy = lambda x: 0.5 * x.pow(2).sum(1)  # noqa: E731
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    penalty, e = losses.gradient_penalty(energy, x)
    assert penalty.item() == pytest.approx((25.0 + 0.0) / 2)
    assert torch.allclose(e, torch.tensor([12.5, 0.0]))
    zero, _ = losses.gradient_penalty(energy, torch.zeros(4, 2))
    assert zero.item() == 0.0


def test_penalty_of_linear_energy_and_its_parameter_gradient():
    lin = torch.nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 2.0]]))
    penalty, _ = losses.gradient_penalty(lambda x: lin(x).squeeze(1), torch.randn(16, 3))
    assert penalty.item() == pytest.approx(9.0)
    penalty.backward()  # the penalty is in the graph: d/dw ‖w‖² = 2w
    assert torch.allclose(lin.weight.grad, 2 * lin.weight.detach())


def test_energy_loss_lowers_real_and_raises_fake():
    e_real = torch.tensor([1.0, 2.0], requires_grad=True)
    e_fake = torch.tensor([0.5, 0.5], requires_grad=True)
    loss = losses.energy_loss(e_real, e_fake, torch.tensor(2.0), gp_weight=0.5)
    assert loss.item() == pytest.approx(1.5 - 0.5 + 1.0)
    loss.backward()
    assert torch.all(e_real.grad > 0)  # descent lowers E on data
    assert torch.all(e_fake.grad < 0)  # and raises it on samples


def test_encoder_mi_loss_is_mean_squared_norm():
    z = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    z_hat = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert losses.encoder_mi_loss(z, z_hat).item() == pytest.approx((1.0 + 4.0) / 2)


def test_jsd_loss_bounds():
    """Indistinguishable pairs give 2·log 2; a perfect statistics network gives ~0."""
    zeros = torch.zeros(8)
    assert losses.jsd_mi_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert losses.jsd_mi_loss(torch.full((8,), 30.0), torch.full((8,), -30.0)).item() < 1e-6


def test_generator_loss_combines_energy_and_entropy():
    e_fake = torch.tensor([1.0, 3.0])
    assert losses.generator_loss(e_fake, torch.tensor(0.5), entropy_weight=2.0).item() == 3.0
