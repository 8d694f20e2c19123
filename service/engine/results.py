"""What the engine's operations return: small typed records, arrays as numpy. Front-ends
turn them into their protocol's bodies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MCMCParams:
    """Latent MALA options of one sampling request."""

    steps: int = 50
    step_size: float = 0.01
    temperature: float = 1.0
    prior: bool = True
    adapt: bool = False


@dataclass(frozen=True)
class Rows:
    """Request rows in model space, checked: x (N, data_dim) float32."""

    x: np.ndarray
    from_records: bool = False


@dataclass(frozen=True)
class Samples:
    model: str
    version: str
    seed: int
    samples: np.ndarray  # (n, data_dim) float32, model space
    latent: np.ndarray  # (n, latent_dim) float32
    records: list[dict[str, object]] | None = None  # decoded rows, when asked for
    acceptance_rate: float | None = None  # with MCMC: mean acceptance over chains
    step_size: float | None = None  # with MCMC: final (adapted) step size


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


@dataclass(frozen=True)
class Contribution:
    feature: str
    gradient: float  # dE/dx in model space, summed over a record feature's one-hot columns


@dataclass(frozen=True)
class Anomalies:
    model: str
    version: str
    threshold: float
    scores: np.ndarray  # (N,) energies
    percentiles: np.ndarray  # (N,) rank among the calibration scores, 0-100
    flags: np.ndarray  # (N,) bool
    explanations: list[list[Contribution]] | None = None
