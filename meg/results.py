"""Results that read the same whether an operation ran in this process (the service's
engine) or came back over HTTP (meg.client): one type for each, shared by both."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Energies:
    model: str
    version: str
    energies: np.ndarray  # (N,) float32


@dataclass(frozen=True)
class Latents:
    model: str
    version: str
    latent: np.ndarray  # (N, latent_dim) float32
