"""Metropolis-adjusted Langevin (MALA): one implementation, used by training (latent
negative phase) and by the service (refined sampling).

`mala` is a pure function over a callable energy U: it holds no weights. It is exact
(the Metropolis-Hastings correction uses the squared norms of the forward and reverse
Gaussian proposal densities) and caches U and grad U of the current state, so one step
costs one forward and one backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

EnergyFn = Callable[[torch.Tensor], torch.Tensor]  # (B, d) -> (B,)

TARGET_ACCEPTANCE = 0.574  # optimal for MALA in high dimension (Roberts & Rosenthal 1998)


@dataclass
class MALAResult:
    z: torch.Tensor  # (B, d) final states, detached
    acceptance: torch.Tensor  # (B,) share of proposals accepted per chain (after burn-in)
    step_size: float  # final step size (adapted when adapt=True)


def energy_and_grad(energy_fn: EnergyFn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U(z) (B,) and grad U(z) (B, d), both detached. Parameters of the networks inside
    energy_fn receive no gradient."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        u = energy_fn(z)
        (g,) = torch.autograd.grad(u.sum(), z)
    return u.detach(), g.detach()


def _log_q(to: torch.Tensor, frm: torch.Tensor, grad_frm: torch.Tensor, eps: float | torch.Tensor,
           four_eps: float | torch.Tensor) -> torch.Tensor:
    """log q(to | frm) up to a constant: the proposal is N(frm - eps grad U(frm), 2 eps I)."""
    diff = to - frm + eps * grad_frm
    return -diff.pow(2).sum(dim=1) / four_eps


NOISE_BLOCK = 10  # steps of random numbers drawn per call (see draw_block)


def draw_block(generator: torch.Generator | None, n: int, dim: int, steps_left: int,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The random numbers of `n` chains for their next k = min(NOISE_BLOCK, steps_left)
    steps, in two calls: per step the proposal noise (n, dim) and the uniforms (n,) of the
    accept test.

    A run draws a block at its steps 0, NOISE_BLOCK, 2 NOISE_BLOCK, ... and this is the
    only place its stream is drawn: `mala` does so, and so does the service's batched
    chain loop for each request, so a request's numbers are the same alone or batched.
    Blocks rather than two calls per step because for a request's few chains the fixed
    cost of a call (~1.5 us) is most of what drawing them costs."""
    k = min(NOISE_BLOCK, steps_left)
    noise = torch.randn((k, n, dim), generator=generator, dtype=dtype, device=device)
    uniform = torch.rand((k, n), generator=generator, dtype=dtype, device=device)
    return noise.unbind(0), uniform.unbind(0)


@dataclass
class MALAStep:
    z: torch.Tensor  # (B, d) states after the step
    u: torch.Tensor  # (B,) U(z)
    g: torch.Tensor  # (B, d) grad U(z)
    accept: torch.Tensor  # (B,) bool: the proposal was accepted
    log_alpha: torch.Tensor  # (B,) log acceptance probability (NaN energies: -inf)


def mala_step(energy_fn: EnergyFn, z: torch.Tensor, u: torch.Tensor, g: torch.Tensor,
              noise: torch.Tensor, uniform: torch.Tensor, eps: float | torch.Tensor,
              noise_scale: float | torch.Tensor, four_eps: float | torch.Tensor) -> MALAStep:
    """One exact MALA step from z (B, d) with cached U(z) (B,) and grad U(z) (B, d):
    one forward and one backward pass. `noise` (B, d) and `uniform` (B,) come from
    `draw_block`. The step size enters as eps, sqrt(2 eps) and 4 eps: Python floats (one
    step size for all rows), or per-row columns (B, 1), (B, 1) and (B,) holding the same
    values in z's dtype, which give bit for bit the same rows (the batched chain loop)."""
    prop = z - eps * g + noise_scale * noise  # (B, d)
    u_p, g_p = energy_and_grad(energy_fn, prop)
    log_alpha = (u - u_p) + _log_q(z, prop, g_p, eps, four_eps) \
        - _log_q(prop, z, g, eps, four_eps)  # (B,)
    # NaN energies (e.g. an overflow far out) are rejected, never accepted.
    log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
    accept = torch.log(uniform) < log_alpha  # (B,)
    return MALAStep(torch.where(accept[:, None], prop, z), torch.where(accept, u_p, u),
                    torch.where(accept[:, None], g_p, g), accept, log_alpha)


def mean_acceptance(log_alpha: list[float]) -> float:
    """The mean acceptance probability of a run's chains (its step-size adaptation signal)
    from their log_alpha: exactly rounded (math.fsum), so the same whatever batch the
    chains were computed in."""
    return math.fsum(math.exp(min(a, 0.0)) for a in log_alpha) / len(log_alpha)


def adapt_log_step(log_eps: float, alpha_mean: float, t: int,
                   target_acceptance: float = TARGET_ACCEPTANCE) -> float:
    """Robbins-Monro on the log step size after step t (0-based) of the burn-in."""
    return log_eps + (alpha_mean - target_acceptance) / math.sqrt(t + 1.0)


def mala(
    z: torch.Tensor,
    energy_fn: EnergyFn,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    adapt: bool = False,
    burn_in: int | None = None,
    target_acceptance: float = TARGET_ACCEPTANCE,
) -> MALAResult:
    """Run `n_steps` of MALA from `z` (B, d) targeting exp(-U).

    adapt: during the first `burn_in` steps (default n_steps // 2) the step size moves
    toward `target_acceptance` (Robbins-Monro on log step size, from the mean acceptance
    probability); it is then frozen, so the remaining steps are an exact MH chain.
    Acceptance is counted over the non-burn-in steps (all steps when adapt=False).
    Random numbers: `draw_block` from `generator`, every NOISE_BLOCK steps.
    """
    if n_steps < 0:
        raise ValueError("n_steps must be >= 0")
    if step_size <= 0:
        raise ValueError("step_size must be > 0")
    if burn_in is None:
        burn_in = n_steps // 2 if adapt else 0
    eps = float(step_size)
    log_eps = math.log(eps)
    z = z.detach()
    u, g = energy_and_grad(energy_fn, z)  # cached for the current state
    accepted = torch.zeros(z.shape[0], device=z.device)
    counted = 0
    noise: tuple[torch.Tensor, ...] = ()
    uniform: tuple[torch.Tensor, ...] = ()
    for t in range(n_steps):
        j = t % NOISE_BLOCK
        if j == 0:
            noise, uniform = draw_block(generator, z.shape[0], z.shape[1], n_steps - t,
                                        z.dtype, z.device)
        s = mala_step(energy_fn, z, u, g, noise[j], uniform[j], eps, math.sqrt(2.0 * eps),
                      4.0 * eps)
        z, u, g = s.z, s.u, s.g
        if adapt and t < burn_in:
            log_eps = adapt_log_step(log_eps, mean_acceptance(s.log_alpha.tolist()), t,
                                     target_acceptance)
            eps = math.exp(log_eps)
        else:
            accepted += s.accept.to(accepted.dtype)
            counted += 1
    acceptance = accepted / max(counted, 1)
    return MALAResult(z=z, acceptance=acceptance, step_size=eps)


def latent_energy(
    generator: Callable[[torch.Tensor], torch.Tensor],
    energy: Callable[[torch.Tensor], torch.Tensor],
    temperature: float = 1.0,
    prior: bool = True,
) -> EnergyFn:
    """U(z) = E(G(z)) / temperature (+ ½‖z‖² when `prior`): the latent target of MEG.

    `energy` may return (B,) or (B, 1)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")

    def u(z: torch.Tensor) -> torch.Tensor:
        e = energy(generator(z)).reshape(z.shape[0]) / temperature  # (B,)
        if prior:
            e = e + 0.5 * z.pow(2).sum(dim=1)
        return e

    return u


def sample_latent(
    generator: Callable[[torch.Tensor], torch.Tensor],
    energy: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    latent_dim: int,
    n_steps: int,
    step_size: float = 0.01,
    temperature: float = 1.0,
    prior: bool = True,
    adapt: bool = False,
    rng: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> MALAResult:
    """Thin orchestrator: z ~ N(0, I), then MALA on U(z) = E(G(z))/T + ½‖z‖²."""
    z0 = torch.randn((n, latent_dim), generator=rng, device=device)
    return mala(
        z0,
        latent_energy(generator, energy, temperature, prior),
        step_size=step_size,
        n_steps=n_steps,
        generator=rng,
        adapt=adapt,
    )
