"""PNG pictures of samples, drawn with Pillow (no plotting stack in the server): an image
grid for image data, samples over energy contours for 2-D data, and energy histograms
(data against samples) otherwise. Used by `GET /sample.png` and by training's previews.

Every picture is well defined for any input: one sample, constant samples and non-finite
values all give a valid PNG quickly (a NaN coordinate would make Pillow spend seconds per
shape while holding the GIL, stalling a whole server)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from meg.bundle import DataSpec


def _range(values: np.ndarray, lo_pct: float = 0.0, hi_pct: float = 100.0) -> tuple[float, float]:
    """A finite, non-empty float64 interval covering the finite `values` (between the
    given percentiles): widened around a single value, (0, 1) when nothing is finite."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(np.percentile(v, lo_pct)), float(np.percentile(v, hi_pct))
    # Relative to the magnitude: a fixed epsilon vanishes next to a large value in float32.
    min_width = 1e-6 * max(1.0, abs(lo), abs(hi))
    if not hi - lo >= min_width:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - min_width, mid + min_width
    return lo, hi


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_grid(samples: np.ndarray, shape: list[int], value_range: list[float] | None,
               scale: int = 3) -> bytes:
    """Rows (N, c·h·w) as a square grid of images, 1-pixel gaps."""
    c, h, w = shape
    n = max(1, int(np.ceil(np.sqrt(len(samples)))))
    lo, hi = value_range if value_range else _range(samples)
    scaled = (np.asarray(samples, dtype=np.float64).reshape(-1, c, h, w) - lo) / (hi - lo)
    imgs = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    grid = np.ones((n * (h + 1) + 1, n * (w + 1) + 1, c), dtype=np.float32)
    for k, img in enumerate(imgs):
        r, q = divmod(k, n)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = (
            img.transpose(1, 2, 0)
        )
    arr = (grid * 255).astype(np.uint8)
    pil = Image.fromarray(arr[:, :, 0] if c == 1 else arr[:, :, :3])
    return _png(pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST))


def _viridis_like(t: np.ndarray) -> np.ndarray:
    """A perceptually ordered dark-blue -> yellow ramp, (…,) in [0,1] -> (…, 3) uint8."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                     dtype=np.float32)
    x = np.clip(t, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def _finite_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x).all(axis=1)]


def scatter_over_energy(samples: np.ndarray, energy_fn: Callable[[np.ndarray], np.ndarray],
                        data: np.ndarray | None = None, size: int = 480) -> bytes:
    """2-D samples (red) and data (white) over the energy landscape (low = dark)."""
    samples = _finite_rows(samples)
    data = None if data is None else _finite_rows(data)
    pts = samples if data is None else np.concatenate([samples, data])
    (x0, x1), (y0, y1) = _range(pts[:, 0], 0.5, 99.5), _range(pts[:, 1], 0.5, 99.5)
    lo, hi = np.array([x0, y0]), np.array([x1, y1])
    pad = 0.15 * (hi - lo) + 1e-3
    lo, hi = lo - pad, hi + pad
    res = 120
    xs, ys = np.linspace(lo[0], hi[0], res), np.linspace(hi[1], lo[1], res)  # top row = max y
    gx, gy = np.meshgrid(xs, ys)
    e = energy_fn(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)).reshape(res, res)
    e = np.nan_to_num(np.asarray(e, dtype=np.float64), nan=np.inf)
    # Rank-normalise so a few huge energies far away do not flatten the picture.
    ranks = e.ravel().argsort().argsort().reshape(res, res) / (e.size - 1)
    img = Image.fromarray(_viridis_like(ranks)).resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)

    def to_px(p: np.ndarray) -> np.ndarray:  # (N, 2) -> (N, 2) pixels, kept near the canvas
        px = np.stack([(p[:, 0] - lo[0]) / (hi[0] - lo[0]) * size,
                       (hi[1] - p[:, 1]) / (hi[1] - lo[1]) * size], 1)
        return np.clip(px, -8.0, size + 8.0)

    if data is not None:
        for x, y in to_px(data[:2000]):
            draw.point((x, y), fill=(255, 255, 255))
    for x, y in to_px(samples):
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(230, 30, 30))
    return _png(img)


def energy_histogram(e_data: np.ndarray, e_samples: np.ndarray, width: int = 480,
                     height: int = 240) -> bytes:
    """Histograms of energies: held-out data (blue) and generator samples (orange).
    Non-finite energies are left out; a single or constant energy gets a narrow range."""
    e_data = np.asarray(e_data, dtype=np.float64).ravel()
    e_samples = np.asarray(e_samples, dtype=np.float64).ravel()
    e_data, e_samples = e_data[np.isfinite(e_data)], e_samples[np.isfinite(e_samples)]
    lo, hi = _range(np.concatenate([e_data, e_samples]), 0.5, 99.5)
    bins = np.linspace(lo, hi, 61)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    bw = width / 60
    for values, colour in ((e_data, (31, 119, 180)), (e_samples, (255, 127, 14))):
        counts, _ = np.histogram(values, bins=bins)  # (60,)
        top = int(counts.max()) if counts.size else 0
        if top == 0:
            continue
        for k in np.flatnonzero(counts):
            y = round(height - counts[k] / top * (height - 10))
            draw.rectangle((round(k * bw), y, round((k + 1) * bw) - 1, height), outline=colour)
    return _png(img)


def preview_png(spec: DataSpec, samples: np.ndarray, energy_fn: Callable[[np.ndarray], np.ndarray],
                data: np.ndarray | None = None) -> bytes:
    """The right picture for the data kind (samples and data are model-space rows)."""
    if spec.kind == "image":
        return image_grid(samples[:64], spec.shape, spec.value_range)
    if spec.dim == 2:
        return scatter_over_energy(samples, energy_fn, data)
    reference = data if data is not None else samples
    return energy_histogram(energy_fn(reference), energy_fn(samples))
