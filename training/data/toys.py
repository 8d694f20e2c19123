"""2-D toy distributions, generated as the MEG paper's code does, and their metrics.

- ``25gaussians``: centres (2x, 2y) for x, y in -2..2, noise std 0.05, everything divided
  by 2.828: centres 0.707 apart, std 0.0177.
- ``8gaussians``: 8 centres on a circle of radius 2, noise std 0.02, divided by 1.414.
- ``swissroll``: scikit-learn ``make_swiss_roll(noise=0.25)``, columns 0 and 2, / 7.5.

Metrics follow docs' convention (REFERENCE.md): a sample is high quality within 3 std
of its nearest centre; a mode is covered by at least 20 high-quality samples; KL between
the high-quality mode frequencies and uniform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meg.bundle import DataSpec
from training.data import Dataset

TOYS = ("25gaussians", "8gaussians", "swissroll")

# The paper's constants (its code divides by these rounded values, not by sqrt).
_GRID_SCALE = 2.828
_CIRCLE_SCALE = 1.414
_SWISS_SCALE = 7.5
_SWISS_NOISE = 0.25
_GRID_STD = 0.05
_CIRCLE_STD = 0.02
_R2 = 1.0 / np.sqrt(2.0)
_CIRCLE_UNIT = np.array(
    [(1, 0), (-1, 0), (0, 1), (0, -1), (_R2, _R2), (_R2, -_R2), (-_R2, _R2), (-_R2, -_R2)],
    dtype=np.float64,
)

MIN_SAMPLES_PER_MODE = 20
HQ_STDS = 3.0
SHOULDER_STDS = 6.0  # 3 to 6 std from a centre: a mode drawn too wide (not a sample between modes)
KL_EPS = 1e-10
VAL_SIZE = 5_000
SELECT_SIZE = 2_048
# Swiss roll "modes": the roll's parameter range cut into equal segments (data is
# uniform in t, so each segment holds an equal share of real samples).
SWISS_SEGMENTS = 10
_SWISS_T = (1.5 * np.pi, 4.5 * np.pi)

Seed = int | Sequence[int]


def _check_name(name: str) -> None:
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; known: {', '.join(TOYS)}")


def toy_centres(name: str) -> np.ndarray | None:
    """Mode centres (K, 2) in data space, or None for the swiss roll (no discrete modes)."""
    _check_name(name)
    if name == "25gaussians":
        grid = np.array([(2 * x, 2 * y) for x in range(-2, 3) for y in range(-2, 3)], float)
        return grid / _GRID_SCALE
    if name == "8gaussians":
        return 2.0 * _CIRCLE_UNIT / _CIRCLE_SCALE
    return None


def toy_std(name: str) -> float | None:
    """Per-axis noise std around each centre in data space (None for the swiss roll)."""
    _check_name(name)
    if name == "25gaussians":
        return _GRID_STD / _GRID_SCALE
    if name == "8gaussians":
        return _CIRCLE_STD / _CIRCLE_SCALE
    return None


def sample_toy(name: str, n: int, seed: Seed = 0) -> np.ndarray:
    """`n` samples (n, 2) float32 of toy `name`; `seed` is any numpy seed (int or ints)."""
    _check_name(name)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    if name == "swissroll":
        from sklearn.datasets import make_swiss_roll

        # sklearn wants a RandomState; feed it from the same seed so results are reproducible.
        rs = np.random.RandomState(np.random.PCG64(seed))
        x, _ = make_swiss_roll(n_samples=n, noise=_SWISS_NOISE, random_state=rs)
        return (x[:, [0, 2]] / _SWISS_SCALE).astype(np.float32)
    if name == "25gaussians":
        # The paper's loop emits every centre equally often, then shuffles.
        idx = rng.permutation(np.arange(n) % 25)
        centres, noise = 2.0 * _grid_units(), _GRID_STD
        scale = _GRID_SCALE
    else:
        # The paper picks a centre at random for each point.
        idx = rng.integers(0, 8, size=n)
        centres, noise, scale = 2.0 * _CIRCLE_UNIT, _CIRCLE_STD, _CIRCLE_SCALE
    pts = centres[idx] + noise * rng.standard_normal((n, 2))
    return (pts / scale).astype(np.float32)


def _grid_units() -> np.ndarray:
    return np.array([(x, y) for x in range(-2, 3) for y in range(-2, 3)], dtype=np.float64)


def load_toy(name: str, n: int = 100_000, seed: int = 0) -> Dataset:
    """Toy `name` as a Dataset: `n` training points, 5,000 fresh calibration points and
    2,048 fresh checkpoint-selection points (independent streams of the same seed), no
    labelled test set."""
    _check_name(name)
    train = sample_toy(name, n, seed)
    val = sample_toy(name, VAL_SIZE, [seed, 1])
    select = sample_toy(name, SELECT_SIZE, [seed, 2])  # checkpoint selection, not calibration
    centres = toy_centres(name)
    info: dict[str, Any] = {
        "n": n,
        "seed": seed,
        "centres": None if centres is None else centres.tolist(),
        "std": toy_std(name),
    }
    return Dataset(
        name=name,
        train=train,
        val=val,
        test_x=None,
        test_y=None,
        spec=DataSpec(kind="points", shape=[2], feature_names=["x", "y"]),
        preprocessing=None,
        contamination=0.05,
        info=info,
        select=select,
    )


def _nearest(
    samples: np.ndarray, refs: np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Index of and Euclidean distance to the nearest row of `refs` for every sample."""
    idx = np.empty(len(samples), dtype=np.int64)
    dist = np.empty(len(samples), dtype=np.float64)
    for s in range(0, len(samples), chunk):
        d2 = ((samples[s : s + chunk, None, :] - refs[None, :, :]) ** 2).sum(-1)
        j = np.argmin(d2, axis=1)
        idx[s : s + chunk] = j
        dist[s : s + chunk] = np.sqrt(d2[np.arange(len(j)), j])
    return idx, dist


def _kl_uniform(counts: np.ndarray) -> float | None:
    """KL(p || uniform) of the frequencies `counts`; epsilon keeps empty bins finite.
    None when every count is zero: with no high-quality sample the frequencies are
    undefined (epsilon alone would make them look perfectly uniform)."""
    if counts.sum() == 0:
        return None
    p = counts.astype(np.float64) + KL_EPS
    p /= p.sum()
    return float(np.sum(p * np.log(p * len(p))))


def toy_metrics(name: str, samples: np.ndarray) -> dict[str, Any]:
    """Mode-coverage metrics of `samples` (N, 2) against toy `name`.

    Gaussian mixtures: ``modes_covered`` (modes with >= 20 high-quality samples),
    ``n_modes``, ``high_quality_fraction`` (share within 3 std of the nearest centre),
    ``kl_modes_uniform`` (KL of the high-quality mode frequencies to uniform),
    ``shoulder_fraction`` (share 3 to 6 std from the nearest centre: modes drawn too wide;
    the rest of the low-quality share lies between modes) and ``median_distance_std``
    (median distance to the nearest centre in std; the data's own is √(2 ln 2) ≈ 1.18),
    plus ``n_samples``. Swiss roll (no modes): the roll's parameter range is cut into 10
    segments and the same quantities are reported as ``segments_covered``,
    ``n_segments``, ``high_quality_fraction`` (within 3 noise std of the noise-free
    curve), ``kl_segments_uniform`` and ``mean_curve_distance``.
    Non-finite samples count as low quality."""
    _check_name(name)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"samples must have shape (N, 2), got {x.shape}")
    finite = np.asarray(np.isfinite(x).all(axis=1))
    x = np.where(finite[:, None], x, 0.0)  # placeholders; masked out below
    if name == "swissroll":
        return _swiss_metrics(x, finite)
    centres = toy_centres(name)
    std = toy_std(name)
    assert centres is not None and std is not None
    idx, dist = _nearest(x, centres)
    hq = finite & (dist <= HQ_STDS * std)
    counts = np.bincount(idx[hq], minlength=len(centres))
    return {
        "n_samples": int(len(x)),
        "n_modes": int(len(centres)),
        "modes_covered": int((counts >= MIN_SAMPLES_PER_MODE).sum()),
        "high_quality_fraction": float(hq.mean()) if len(x) else 0.0,
        "kl_modes_uniform": _kl_uniform(counts),
        "shoulder_fraction": float((finite & ~hq & (dist <= SHOULDER_STDS * std)).mean()) if len(x) else 0.0,
        "median_distance_std": float(np.median(np.where(finite, dist, np.inf)) / std) if len(x) else float("nan"),
    }


def _swiss_metrics(x: np.ndarray, finite: np.ndarray) -> dict[str, Any]:
    t = np.linspace(*_SWISS_T, 4000)
    curve = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / _SWISS_SCALE
    idx, dist = _nearest(x, curve)
    hq = finite & (dist <= HQ_STDS * _SWISS_NOISE / _SWISS_SCALE)
    seg = np.minimum(idx * SWISS_SEGMENTS // len(t), SWISS_SEGMENTS - 1)
    counts = np.bincount(seg[hq], minlength=SWISS_SEGMENTS)
    return {
        "n_samples": int(len(x)),
        "n_segments": SWISS_SEGMENTS,
        "segments_covered": int((counts >= MIN_SAMPLES_PER_MODE).sum()),
        "high_quality_fraction": float(hq.mean()) if len(x) else 0.0,
        "kl_segments_uniform": _kl_uniform(counts),
        "mean_curve_distance": float(dist[finite].mean()) if finite.any() else float("nan"),
    }
