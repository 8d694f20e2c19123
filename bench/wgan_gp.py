"""A small WGAN-GP baseline for the benchmarks, on MEG's own networks and budget.

The generator is `training.model.Generator` and the critic is `training.model.Energy`
built from the same `ModelConfig`, so the architectures are MEG's; the loop uses the
recipe's steps, n_critic, batch size, Adam (lr, betas) and `learning_rate` schedule.
The critic is read as an energy (low on data), so with D = −E the WGAN-GP losses are

  critic:    mean E(x) − mean E(G(z)) + λ · mean (‖∇ₓE(x̂)‖ − 1)²,  x̂ = εx + (1−ε)G(z)
  generator: mean E(G(z))

(Gulrajani et al. 2017: one-centred penalty on random interpolates, λ = 10). Unlike MEG
there is no entropy term and no penalty on real data only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from training import losses
from training.config import RecipeConfig
from training.data import Dataset
from training.model import Energy, Generator, architecture
from training.train import resolve_device, set_learning_rate

DEFAULT_GP_WEIGHT = 10.0  # the WGAN-GP paper's λ for its one-centred penalty


@dataclass
class WGANResult:
    generator: Generator
    critic: Energy  # read as an energy: low on data
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def interpolate_penalty(critic: Energy, x_real: torch.Tensor, x_fake: torch.Tensor,
                        rng: torch.Generator) -> torch.Tensor:
    """mean (‖∇ₓ critic(x̂)‖ − 1)² at random points x̂ on the segments real–fake."""
    x_hat = losses.interpolates(x_real, x_fake, rng).requires_grad_(True)  # (B, D)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (g.norm(dim=1) - 1.0).pow(2).mean()


def train_wgan_gp(cfg: RecipeConfig, data: Dataset, gp_weight: float = DEFAULT_GP_WEIGHT,
                  progress: bool = False, log_every: int = 0) -> WGANResult:
    """Train WGAN-GP on `data.train` with `cfg`'s networks and training settings.

    `cfg.model.data_dim`/`data_shape` are filled from the data, as `train` does.
    `progress`: print a line every `log_every` steps (default: 10 lines in all)."""
    t0 = time.time()
    tc = cfg.train
    device = resolve_device(tc.device)
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    rng = torch.Generator(device=device).manual_seed(tc.seed * 1000)
    cfg.model.data_dim = data.dim
    cfg.model.data_shape = list(data.spec.shape)
    x_all = torch.as_tensor(data.train, dtype=torch.float32, device=device)  # (N, D)

    gen = Generator(architecture(cfg.model)).to(device)
    critic = Energy(architecture(cfg.model)).to(device)
    betas = (tc.beta1, tc.beta2)
    opt_d = torch.optim.Adam(critic.parameters(), lr=tc.lr, betas=betas)
    opt_g = torch.optim.Adam(gen.parameters(), lr=tc.lr, betas=betas)
    log_every = log_every or max(1, tc.steps // 10)
    deadline = t0 + 60 * tc.max_minutes if tc.max_minutes > 0 else math.inf

    def batch() -> torch.Tensor:
        idx = torch.randint(0, x_all.shape[0], (tc.batch_size,), device=device, generator=rng)
        return x_all[idx]  # (B, D)

    def prior(n: int) -> torch.Tensor:
        return torch.randn(n, cfg.model.latent_dim, device=device, generator=rng)  # (B, latent)

    history: list[dict[str, float]] = []
    step = 0
    while step < tc.steps and time.time() < deadline:
        set_learning_rate([opt_d, opt_g], tc, step)
        for _ in range(tc.n_critic):
            x_real = batch()
            with torch.no_grad():
                x_fake = gen(prior(tc.batch_size))
            e_real, e_fake = critic(x_real), critic(x_fake)
            penalty = interpolate_penalty(critic, x_real, x_fake, rng)
            loss_d = e_real.mean() - e_fake.mean() + gp_weight * penalty
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        loss_g = critic(gen(prior(tc.batch_size))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        if step % log_every == 0 or step == tc.steps:
            rec = {"step": step, "loss_critic": loss_d.item(), "loss_generator": loss_g.item(),
                   "penalty": penalty.item(), "wasserstein": (e_fake.mean() - e_real.mean()).item()}
            history.append(rec)
            if progress:
                print(f"    wgan-gp step {step}/{tc.steps}  critic {rec['loss_critic']:.3f}  "
                      f"W {rec['wasserstein']:.3f}  gp {rec['penalty']:.3f}  "
                      f"{time.time() - t0:.0f}s", flush=True)
    gen.eval()
    critic.eval()
    return WGANResult(gen, critic, step, time.time() - t0, history)
