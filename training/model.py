"""The networks of MEG: generator G(z), energy E(x), encoder Enc(x) and the Deep
InfoMax statistics network T(x, z). Every network takes and returns flat rows
(B, data_dim) at its boundary, as the bundle does; conv nets reshape inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.config import ModelConfig


def mlp(in_dim: int, hidden: list[int], out_dim: int, act: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU() if act == "relu" else nn.LeakyReLU(0.2)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def _output_act(name: str) -> nn.Module:
    return {"linear": nn.Identity(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[name]


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "conv":
            c, h, w = cfg.data_shape
            self.c, self.h4, self.w4 = c, h // 4, w // 4
            k = cfg.conv_width
            self.fc = nn.Sequential(nn.Linear(cfg.latent_dim, 2 * k * self.h4 * self.w4), nn.ReLU())
            self.net = nn.Sequential(
                nn.ConvTranspose2d(2 * k, k, 4, stride=2, padding=1),  # (B, k, h/2, w/2)
                nn.ReLU(),
                nn.ConvTranspose2d(k, c, 4, stride=2, padding=1),  # (B, c, h, w)
            )
        else:
            self.net = mlp(cfg.latent_dim, cfg.g_hidden, cfg.data_dim, "relu")
        self.out = _output_act(cfg.g_output)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, data_dim)
        if self.cfg.arch == "conv":
            h = self.fc(z).view(z.shape[0], -1, self.h4, self.w4)
            return self.out(self.net(h)).flatten(1)
        return self.out(self.net(z))


class ConvFeatures(nn.Module):
    """DCGAN-style discriminator trunk: (B, c·h·w) -> (B, 2k·h/4·w/4)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, h, w = cfg.data_shape
        k = cfg.conv_width
        self.shape = (c, h, w)
        self.net = nn.Sequential(
            nn.Conv2d(c, k, 4, stride=2, padding=1),  # (B, k, h/2, w/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(k, 2 * k, 4, stride=2, padding=1),  # (B, 2k, h/4, w/4)
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.out_dim = 2 * k * (h // 4) * (w // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(x.shape[0], *self.shape))


class Critic(nn.Module):
    """x -> out_dim features through an MLP or a conv trunk; the base of E, Enc and T."""

    def __init__(self, cfg: ModelConfig, hidden: list[int], out_dim: int, extra_in: int = 0):
        super().__init__()
        self.extra_in = extra_in
        if cfg.arch == "conv":
            self.trunk: nn.Module = ConvFeatures(cfg)
            self.head = mlp(self.trunk.out_dim + extra_in, hidden[-1:], out_dim, "leaky")  # type: ignore[operator]
        else:
            self.trunk = nn.Identity()
            self.head = mlp(cfg.data_dim + extra_in, hidden, out_dim, "leaky")

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.trunk(x)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        return self.head(h)


class Energy(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = Critic(cfg, cfg.e_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, data_dim) -> (B,)
        return self.net(x).squeeze(1)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = Critic(cfg, cfg.enc_hidden, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, data_dim) -> (B, latent)
        return self.net(x)


class StatisticsNetwork(nn.Module):
    """Deep InfoMax T(x, z): a score that is high for joint pairs (G(z), z)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = Critic(cfg, cfg.t_hidden, 1, extra_in=cfg.latent_dim)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # -> (B,)
        return self.net(x, z).squeeze(1)


@dataclass
class MEG:
    """The four networks of one model."""

    generator: Generator
    energy: Energy
    encoder: Encoder
    statistics: StatisticsNetwork | None

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {
            "generator": self.generator,
            "energy": self.energy,
            "encoder": self.encoder,
        }
        if self.statistics is not None:
            mods["statistics"] = self.statistics
        return mods


def build_meg(cfg: ModelConfig, entropy: str, device: torch.device) -> MEG:
    if cfg.arch == "conv" and len(cfg.data_shape) != 3:
        raise ValueError(f"model.arch='conv' needs image data, got shape {cfg.data_shape}")
    return MEG(
        generator=Generator(cfg).to(device),
        energy=Energy(cfg).to(device),
        encoder=Encoder(cfg).to(device),
        statistics=StatisticsNetwork(cfg).to(device) if entropy == "jsd" else None,
    )
