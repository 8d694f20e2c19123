"""meg.render gives a valid PNG, quickly, for every data kind and any sample count,
including one sample, constant samples and non-finite values (issue 11: one tabular
sample made the histogram range collapse, and Pillow spent seconds per NaN rectangle)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from meg.bundle import DataSpec
from meg.render import energy_histogram, preview_png

# A regression hangs (seconds per NaN rectangle) rather than fails: bound it.
pytestmark = pytest.mark.timeout(60)

SPECS = {
    "points": DataSpec("points", [2], ["x", "y"]),
    "image": DataSpec("image", [1, 8, 8], [f"p{i}" for i in range(64)], [-1.0, 1.0]),
    "image-no-range": DataSpec("image", [3, 4, 4], [f"p{i}" for i in range(48)]),
    "tabular": DataSpec("tabular", [5], [f"f{i}" for i in range(5)]),
}


def _energy(x: np.ndarray) -> np.ndarray:  # (B, d) -> (B,)
    return (np.asarray(x, dtype=np.float32) ** 2).sum(axis=1)


def _check_png(png: bytes) -> Image.Image:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    img.load()  # decodes the whole image: a truncated or corrupt PNG raises here
    assert img.width > 0 and img.height > 0
    return img


def _render(spec: DataSpec, samples: np.ndarray, data: np.ndarray | None = None) -> Image.Image:
    t0 = time.perf_counter()
    png = preview_png(spec, samples.astype(np.float32), _energy, data)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"{spec.kind}: {elapsed:.2f}s"
    return _check_png(png)


@pytest.mark.parametrize("kind", sorted(SPECS))
@pytest.mark.parametrize("n", [1, 2, 3])
def test_few_random_samples(kind: str, n: int) -> None:
    spec = SPECS[kind]
    _render(spec, np.random.default_rng(n).normal(size=(n, spec.dim)))


@pytest.mark.parametrize("kind", sorted(SPECS))
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("value", [0.0, 1e6, -3.5])
def test_constant_samples(kind: str, n: int, value: float) -> None:
    spec = SPECS[kind]
    _render(spec, np.full((n, spec.dim), value))


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_non_finite_samples_and_data(kind: str) -> None:
    spec = SPECS[kind]
    x = np.random.default_rng(0).normal(size=(4, spec.dim))
    x[0, 0], x[1, -1], x[2, :] = np.nan, np.inf, -np.inf
    _render(spec, x, data=x[::-1].copy())
    _render(spec, np.full((2, spec.dim), np.nan))  # nothing finite at all


def test_histogram_degenerate_inputs_are_quick_and_drawn() -> None:
    for e_data, e_samples in [
        (np.array([1.0]), np.array([1.0])),  # the n=1 case of issue 11
        (np.array([3e7] * 5), np.array([3e7])),  # collapses in float32 with an absolute epsilon
        (np.array([]), np.array([2.0])),
        (np.array([np.nan, np.inf]), np.array([np.nan])),
    ]:
        t0 = time.perf_counter()
        img = _check_png(energy_histogram(e_data.astype(np.float32), e_samples.astype(np.float32)))
        assert time.perf_counter() - t0 < 1.0
        if np.isfinite(e_samples).any():
            # something was drawn: the sample bar is orange, not an empty white canvas
            colours = {c for _, c in img.convert("RGB").getcolors(1 << 16) or []}
            assert (255, 127, 14) in colours


def test_histogram_shows_both_distributions() -> None:
    rng = np.random.default_rng(0)
    img = _check_png(energy_histogram(rng.normal(0, 1, 500), rng.normal(5, 1, 500))).convert("RGB")
    arr = np.asarray(img)
    blue = np.argwhere((arr == (31, 119, 180)).all(axis=2))[:, 1]
    orange = np.argwhere((arr == (255, 127, 14)).all(axis=2))[:, 1]
    # the data histogram sits left of the samples' one
    assert blue.size and orange.size and np.median(blue) < np.median(orange)
