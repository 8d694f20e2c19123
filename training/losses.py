"""MEG's losses: small pure functions beside the networks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def energy_gap(e_real: torch.Tensor, e_fake: torch.Tensor) -> torch.Tensor:
    """mean E(x_real) − mean E(G(z)): lowered on data, raised on samples."""
    return e_real.mean() - e_fake.mean()


def gradient_penalty(
    energy: Callable[[torch.Tensor], torch.Tensor], x_real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-centred gradient penalty mean ‖∇ₓE(x)‖² at the rows `x_real` (real data, or
    `interpolates`), kept in the graph so that it trains E. Returns (penalty, E(x_real)) so
    the energy step on data needs one forward pass."""
    x = x_real.detach().requires_grad_(True)
    e = energy(x)  # (B,)
    (g,) = torch.autograd.grad(e.sum(), x, create_graph=True)
    return g.pow(2).sum(dim=1).mean(), e


def interpolates(x_real: torch.Tensor, x_fake: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One random point on each segment between a real row and a sample: εx + (1−ε)G(z),
    ε ~ U(0, 1) per row (where WGAN-GP and the zero-centred 0-GP take their penalty)."""
    shape = (x_real.shape[0],) + (1,) * (x_real.dim() - 1)
    eps = torch.rand(shape, device=x_real.device, generator=rng)  # (B, 1, ...)
    return eps * x_real.detach() + (1.0 - eps) * x_fake.detach()


def energy_loss(
    e_real: torch.Tensor, e_fake: torch.Tensor, penalty: torch.Tensor, gp_weight: float
) -> torch.Tensor:
    return energy_gap(e_real, e_fake) + gp_weight * penalty


def encoder_mi_loss(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """mean ‖z − Enc(G(z))‖²: minimising it raises a lower bound on I(x; z)."""
    return (z - z_hat).pow(2).sum(dim=1).mean()


def jsd_mi_loss(t_joint: torch.Tensor, t_marginal: torch.Tensor) -> torch.Tensor:
    """Deep InfoMax's Jensen-Shannon estimator as a loss: binary cross-entropy with the
    joint pairs (G(z), z) as positives and shuffled pairs (G(z), z[perm]) as negatives.
    Minimising it raises the JSD lower bound on I(x; z)."""
    return F.softplus(-t_joint).mean() + F.softplus(t_marginal).mean()


def generator_loss(e_fake: torch.Tensor, mi_loss: torch.Tensor, entropy_weight: float) -> torch.Tensor:
    """mean E(G(z)) − entropy_weight · Î(x; z), with −Î expressed by an MI loss."""
    return e_fake.mean() + entropy_weight * mi_loss
