"""What the engine's operations return: small typed records, arrays as numpy. Front-ends
turn them into their protocol's bodies. Energies and Latents, the same for the client,
live in meg.results."""

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
    # records: per row, the categorical features whose value training never saw (scored
    # as an all-zero one-hot block); None for model-space inputs
    unseen: list[list[str]] | None = None


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
class Contribution:
    feature: str
    gradient: float  # dE/dx in model space, summed over a record feature's one-hot columns


@dataclass(frozen=True)
class Anomalies:
    """Flags by an explicit threshold (score >= threshold; target_fpr None) or, by
    default, by conformal p-value <= target_fpr; then `threshold` is the equivalent score
    boundary (rows scoring above it are flagged)."""

    model: str
    version: str
    threshold: float
    scores: np.ndarray  # (N,) the score named by score_name
    percentiles: np.ndarray  # (N,) share of calibration scores below each score, 0-100
    flags: np.ndarray  # (N,) bool
    explanations: list[list[Contribution]] | None = None
    p_values: np.ndarray | None = None  # (N,) conformal p-values against the calibration
    target_fpr: float | None = None  # the α flags were raised at (None: explicit threshold)
    score_name: str = "energy"
    unseen: list[list[str]] | None = None  # records: per row, features with unseen categories
