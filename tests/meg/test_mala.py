"""Statistical tests of MALA against targets known in closed form.

Chains are many and steps large enough that an inexact acceptance rule (the paper's
code uses the norm instead of the squared norm) or plain unadjusted Langevin is biased
by several standard errors, so those variants fail these tests (checked below)."""

import math

import pytest
import torch

from meg.mala import NOISE_BLOCK, draw_block, latent_energy, mala, mean_acceptance, sample_latent


def gaussian_energy(mean: torch.Tensor, cov: torch.Tensor):
    prec = torch.linalg.inv(cov)

    def u(z):
        d = z - mean
        return 0.5 * ((d @ prec) * d).sum(dim=1)

    return u


def _wrong_mala(z, energy_fn, step_size, n_steps, generator):
    """The paper's rule: norms instead of squared norms in the proposal densities."""
    from meg.mala import energy_and_grad

    eps = step_size
    u, g = energy_and_grad(energy_fn, z)
    for _ in range(n_steps):
        prop = z - eps * g + math.sqrt(2 * eps) * torch.randn(z.shape, generator=generator)
        u_p, g_p = energy_and_grad(energy_fn, prop)
        fwd = -(prop - z + eps * g).norm(dim=1) / (4 * eps)
        rev = -(z - prop + eps * g_p).norm(dim=1) / (4 * eps)
        acc = torch.log(torch.rand(z.shape[0], generator=generator)) < (u - u_p + rev - fwd)
        z = torch.where(acc[:, None], prop, z)
        u = torch.where(acc, u_p, u)
        g = torch.where(acc[:, None], g_p, g)
    return z


MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
CHAINS, STEPS, EPS = 4000, 150, 0.45


def _moments(z):
    m = z.mean(0)
    c = torch.cov(z.T)
    return m, c


def test_gaussian_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(CHAINS, 2, generator=g) * 2
    res = mala(z0, gaussian_energy(MEAN, COV), step_size=EPS, n_steps=STEPS, generator=g)
    m, c = _moments(res.z)
    se_mean = (torch.diag(COV) / CHAINS).sqrt()
    assert torch.all((m - MEAN).abs() < 4 * se_mean), m
    # Var of a sample variance is 2 sigma^4 / n; allow 4 standard errors.
    se_cov = (2 * torch.diag(COV) ** 2 / CHAINS).sqrt()
    assert torch.all((torch.diag(c) - torch.diag(COV)).abs() < 4 * se_cov), c
    assert abs(c[0, 1] - COV[0, 1]) < 0.06, c
    assert 0.2 < res.acceptance.mean() < 0.95


def test_wrong_acceptance_rule_is_detected():
    """The same check rejects the paper's norm-based correction: the test has power."""
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(CHAINS, 2, generator=g) * 2
    z = _wrong_mala(z0, gaussian_energy(MEAN, COV), EPS, STEPS, g)
    c = torch.cov(z.T)
    se_cov = (2 * torch.diag(COV) ** 2 / CHAINS).sqrt()
    assert torch.any((torch.diag(c) - torch.diag(COV)).abs() > 4 * se_cov), c


def test_identity_generator_quadratic_energy():
    """G(z) = z, E(x) = ½‖x − m‖²/s², prior on: U is Gaussian with precision 1/s² + 1."""
    m, s2, temp = torch.tensor([2.0, -1.0, 0.5]), 0.5, 1.0

    def energy(x):
        return 0.5 * (x - m).pow(2).sum(1) / s2

    prec = 1 / s2 + 1
    want_mean, want_var = (m / s2) / prec, 1 / prec
    res = sample_latent(
        lambda z: z, energy, n=CHAINS, latent_dim=3, n_steps=STEPS, step_size=0.3,
        temperature=temp, prior=True, rng=torch.Generator().manual_seed(1),
    )
    mean, var = res.z.mean(0), res.z.var(0)
    assert torch.all((mean - want_mean).abs() < 4 * math.sqrt(want_var / CHAINS)), mean
    assert torch.all((var - want_var).abs() < 4 * want_var * math.sqrt(2 / CHAINS)), var


def test_temperature_scales_the_target():
    """Without the prior, U = E/T: a quadratic energy of variance 1 becomes variance T."""
    u = latent_energy(lambda z: z, lambda x: 0.5 * x.pow(2).sum(1), temperature=2.0, prior=False)
    g = torch.Generator().manual_seed(2)
    res = mala(torch.zeros(CHAINS, 1), u, step_size=0.8, n_steps=STEPS, generator=g)
    assert abs(res.z.var().item() - 2.0) < 4 * 2.0 * math.sqrt(2 / CHAINS)


def test_two_mode_mixture_weights():
    """1-D mixture 0.3·N(−1, 0.6²) + 0.7·N(1.2, 0.6²): the mass right of the midpoint."""
    w, mu, sd = torch.tensor([0.3, 0.7]), torch.tensor([-1.0, 1.2]), 0.6

    def u(z):
        logp = torch.log(w) - 0.5 * ((z - mu) / sd) ** 2  # (B, 2)
        return -torch.logsumexp(logp, dim=1)

    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(CHAINS, 1, generator=g) * 1.5
    res = mala(z0, u, step_size=0.25, n_steps=400, generator=g)
    # Exact share of mass above 0.1: Φ terms of each component.
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    want = 0.3 * (1 - phi((0.1 + 1.0) / sd)) + 0.7 * (1 - phi((0.1 - 1.2) / sd))
    got = (res.z[:, 0] > 0.1).float().mean().item()
    assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / CHAINS), (got, want)


def test_adaptation_reaches_target_acceptance():
    d = 20
    u = gaussian_energy(torch.zeros(d), torch.eye(d))
    res = mala(
        torch.randn(2000, d, generator=torch.Generator().manual_seed(4)), u, step_size=1e-3,
        n_steps=300, generator=torch.Generator().manual_seed(5), adapt=True, burn_in=200,
    )
    assert res.step_size > 1e-2  # moved away from a far too small start
    assert abs(res.acceptance.mean().item() - 0.574) < 0.1


def test_one_energy_evaluation_per_step():
    calls = []

    def u(z):
        calls.append(1)
        return 0.5 * z.pow(2).sum(1)

    mala(torch.zeros(8, 2), u, step_size=0.1, n_steps=25)
    assert len(calls) == 26  # the initial state plus one proposal per step


def test_same_seed_same_chains_and_validation():
    u = gaussian_energy(MEAN, COV)
    a = mala(torch.zeros(16, 2), u, 0.2, 20, generator=torch.Generator().manual_seed(7))
    b = mala(torch.zeros(16, 2), u, 0.2, 20, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.z, b.z) and torch.equal(a.acceptance, b.acceptance)
    with pytest.raises(ValueError):
        mala(torch.zeros(2, 2), u, 0.0, 5)
    with pytest.raises(ValueError):
        latent_energy(lambda z: z, u, temperature=0)


def test_random_numbers_are_drawn_in_blocks_at_fixed_steps():
    """The stream contract the service's batched loop relies on to give a request the
    samples of running it alone: `mala` draws `draw_block` at steps 0, NOISE_BLOCK, ...
    (the last block short), and nothing else from its generator."""
    steps = 2 * NOISE_BLOCK + 3
    u = gaussian_energy(MEAN, COV)
    g = torch.Generator().manual_seed(11)
    mala(torch.zeros(4, 2), u, 0.2, steps, generator=g)
    want = torch.Generator().manual_seed(11)
    sizes = []
    for t in range(0, steps, NOISE_BLOCK):
        noise, uniform = draw_block(want, 4, 2, steps - t)
        sizes.append(len(noise))
        assert len(uniform) == len(noise) and noise[0].shape == (4, 2)
    assert sizes == [NOISE_BLOCK, NOISE_BLOCK, 3]
    assert torch.equal(g.get_state(), want.get_state())


def test_mean_acceptance_is_exact_and_order_free():
    vals = [-0.5, 0.3, float("-inf"), -1e-9] * 100
    want = sum(math.exp(min(a, 0.0)) for a in vals) / len(vals)
    assert mean_acceptance(vals) == pytest.approx(want, rel=1e-15)
    assert mean_acceptance(vals) == mean_acceptance(vals[::-1])  # fsum: correctly rounded


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    u = gaussian_energy(MEAN.cuda(), COV.cuda())
    res = mala(torch.zeros(CHAINS, 2, device="cuda"), u, EPS, STEPS, generator=g)
    assert res.z.device.type == "cuda"
    assert torch.allclose(res.z.mean(0).cpu(), MEAN, atol=0.1)
