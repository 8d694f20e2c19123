"""The networks of one MEG model. The network classes live in `meg.networks` (shared
with the service, which rebuilds them from a bundle's declared architecture); this module
maps training's `ModelConfig` onto that architecture and builds the four networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from meg.networks import (
    Architecture,
    ConvFeatures,
    Critic,
    Encoder,
    Energy,
    Generator,
    StatisticsNetwork,
    mlp,
)
from training.config import ModelConfig

__all__ = ["MEG", "Architecture", "ConvFeatures", "Critic", "Encoder", "Energy", "Generator",
           "StatisticsNetwork", "architecture", "build_meg", "mlp"]


def architecture(cfg: ModelConfig) -> Architecture:
    """The network architecture a model config describes (data_shape filled from the data)."""
    if cfg.arch == "conv" and len(cfg.data_shape) != 3:
        raise ValueError(f"model.arch='conv' needs image data, got shape {cfg.data_shape}")
    shape = tuple(cfg.data_shape) if cfg.data_shape else (cfg.data_dim,)
    return Architecture(
        arch=cfg.arch, latent_dim=cfg.latent_dim, data_shape=shape,
        g_hidden=tuple(cfg.g_hidden), e_hidden=tuple(cfg.e_hidden),
        enc_hidden=tuple(cfg.enc_hidden), t_hidden=tuple(cfg.t_hidden),
        g_output=cfg.g_output, conv_width=cfg.conv_width,
    )


@dataclass
class MEG:
    """The four networks of one model."""

    generator: Generator
    energy: Energy
    encoder: Encoder
    statistics: StatisticsNetwork | None

    @property
    def architecture(self) -> Architecture:
        return self.generator.arch

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
    arch = architecture(cfg)
    return MEG(
        generator=Generator(arch).to(device),
        energy=Energy(arch).to(device),
        encoder=Encoder(arch).to(device),
        statistics=StatisticsNetwork(arch).to(device) if entropy == "jsd" else None,
    )
