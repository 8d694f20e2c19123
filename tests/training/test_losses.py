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


def test_interpolates_lie_on_the_segments_with_one_weight_per_row():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(64, 5), torch.randn(64, 5)
    x = losses.interpolates(real, fake, g)
    # x − fake = ε (real − fake) with the same ε ∈ [0, 1] for every feature of a row.
    eps = (x - fake) / (real - fake)
    assert torch.allclose(eps, eps[:, :1].expand_as(eps), atol=1e-4)
    assert eps.min() >= 0 and eps.max() <= 1 and eps.std() > 0.2  # spread, not a constant
    images = losses.interpolates(torch.ones(4, 3, 2, 2), torch.zeros(4, 3, 2, 2), g)
    assert images.shape == (4, 3, 2, 2)  # image rows: one ε per image, broadcast
    assert torch.all(images == images[:, :1, :1, :1])


def test_penalty_at_interpolates_trains_the_energy_not_the_generator():
    lin = torch.nn.Linear(3, 1)
    fake = torch.randn(8, 3, requires_grad=True)
    x = losses.interpolates(torch.randn(8, 3), fake, torch.Generator().manual_seed(1))
    penalty, _ = losses.gradient_penalty(lambda v: lin(v).squeeze(1), x)
    assert penalty.item() == pytest.approx(lin.weight.pow(2).sum().item(), rel=1e-5)
    penalty.backward()
    assert lin.weight.grad is not None and fake.grad is None
