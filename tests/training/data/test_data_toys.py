"""2-D toys: generation matches the paper's constants; metrics see modes and collapse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.data.toys import (
    TOYS,
    load_toy,
    sample_toy,
    toy_centres,
    toy_metrics,
    toy_std,
)


def test_constants():
    c25 = toy_centres("25gaussians")
    assert c25.shape == (25, 2)
    xs = np.unique(c25[:, 0])
    assert len(xs) == 5
    np.testing.assert_allclose(np.diff(xs), 2 / 2.828, rtol=1e-9)
    assert math.isclose(toy_std("25gaussians"), 0.05 / 2.828)
    assert abs(toy_std("25gaussians") - 0.0177) < 1e-4
    c8 = toy_centres("8gaussians")
    assert c8.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(c8, axis=1), 2 / 1.414)
    assert math.isclose(toy_std("8gaussians"), 0.02 / 1.414)
    assert toy_centres("swissroll") is None and toy_std("swissroll") is None
    with pytest.raises(ValueError, match="unknown toy"):
        toy_centres("moons")


@pytest.mark.parametrize("name", ["25gaussians", "8gaussians"])
def test_sample_statistics_match_centres_and_std(name):
    x = sample_toy(name, 40_000, seed=1)
    assert x.shape == (40_000, 2) and x.dtype == np.float32
    centres, std = toy_centres(name), toy_std(name)
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    resid = x - centres[nearest]
    np.testing.assert_allclose(resid.std(axis=0), std, rtol=0.03)
    assert np.abs(resid.mean(axis=0)).max() < 0.05 * std
    counts = np.bincount(nearest, minlength=len(centres))
    if name == "25gaussians":
        assert (counts == 40_000 // 25).all()  # balanced, as the paper's loop
    else:
        assert counts.min() > 0.9 * 40_000 / 8


def test_swissroll_shape_and_scale():
    x = sample_toy("swissroll", 5_000, seed=0)
    assert x.shape == (5_000, 2) and x.dtype == np.float32
    r = np.linalg.norm(x, axis=1)
    # noise-free radius is t / 7.5 for t in [1.5 pi, 4.5 pi]
    assert np.percentile(r, 1) > 0.5 and np.percentile(r, 99) < 1.95


def test_seeds_are_reproducible():
    for name in TOYS:
        np.testing.assert_array_equal(sample_toy(name, 100, 3), sample_toy(name, 100, 3))
        assert not np.array_equal(sample_toy(name, 100, 3), sample_toy(name, 100, 4))


@pytest.mark.parametrize("name", TOYS)
def test_load_toy(name):
    ds = load_toy(name, n=10_000, seed=0)
    assert ds.train.shape == (10_000, 2) and ds.train.dtype == np.float32
    assert ds.val.shape == (5_000, 2) and ds.val.dtype == np.float32
    assert not np.array_equal(ds.val, ds.train[:5_000])
    assert ds.test_x is None and ds.test_y is None
    assert ds.spec.kind == "points" and ds.spec.shape == [2]
    assert ds.spec.feature_names == ["x", "y"]
    assert ds.contamination == 0.05
    assert ds.info["std"] == toy_std(name)
    if name != "swissroll":
        np.testing.assert_allclose(ds.info["centres"], toy_centres(name))


@pytest.mark.parametrize("name,k", [("25gaussians", 25), ("8gaussians", 8)])
def test_metrics_on_real_data(name, k):
    m = toy_metrics(name, sample_toy(name, 2_500, seed=7))
    assert m["n_modes"] == k and m["modes_covered"] == k
    # within 3 std in 2-D: 1 - exp(-4.5) = 98.9%
    assert m["high_quality_fraction"] > 0.97
    assert m["kl_modes_uniform"] < 0.02
    assert m["n_samples"] == 2_500


@pytest.mark.parametrize("name", ["25gaussians", "8gaussians"])
def test_shoulder_and_median_distance_have_the_gaussian_answers(name):
    x = sample_toy(name, 20_000, seed=3)
    m = toy_metrics(name, x)
    # 2-D Gaussian radius r/σ: P(3 < r ≤ 6) = exp(-4.5) - exp(-18) = 1.11%; median √(2 ln 2)
    assert abs(m["shoulder_fraction"] - (math.exp(-4.5) - math.exp(-18))) < 0.003
    assert abs(m["median_distance_std"] - math.sqrt(2 * math.log(2))) < 0.03
    centres = toy_centres(name)
    wide = centres[0] + np.random.default_rng(0).normal(0, 2 * toy_std(name), size=x.shape)
    w = toy_metrics(name, wide)  # one mode drawn twice too wide: P(1.5 < r/2σ ≤ 3)
    assert abs(w["shoulder_fraction"] - (math.exp(-9 / 8) - math.exp(-4.5))) < 0.01
    assert abs(w["median_distance_std"] - 2 * math.sqrt(2 * math.log(2))) < 0.05
    between = (centres[0] + centres[1]) / 2  # halfway between two modes: neither HQ nor shoulder
    b = toy_metrics(name, np.repeat(between[None], 100, axis=0))
    assert b["high_quality_fraction"] == 0.0 and b["shoulder_fraction"] == 0.0


def test_metrics_see_collapse():
    x = sample_toy("25gaussians", 10_000, seed=0)
    centres = toy_centres("25gaussians")
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    collapsed = x[nearest < 5][:2_500]  # only 5 of the 25 modes
    m = toy_metrics("25gaussians", collapsed)
    assert m["modes_covered"] == 5
    assert m["high_quality_fraction"] > 0.97
    assert abs(m["kl_modes_uniform"] - math.log(5)) < 0.05
    # one point: a single mode, KL ~ log 25
    m = toy_metrics("25gaussians", np.repeat(x[:1], 2_500, axis=0))
    assert m["modes_covered"] == 1 and abs(m["kl_modes_uniform"] - math.log(25)) < 1e-3


def test_metrics_low_quality_and_non_finite():
    rng = np.random.default_rng(0)
    blur = rng.uniform(-2, 2, size=(2_500, 2))
    m = toy_metrics("25gaussians", blur)
    assert m["high_quality_fraction"] < 0.1
    x = sample_toy("8gaussians", 2_500, seed=0)
    x[:100] = np.nan
    m = toy_metrics("8gaussians", x)
    assert m["high_quality_fraction"] <= 0.96
    with pytest.raises(ValueError, match="shape"):
        toy_metrics("8gaussians", np.zeros((10, 3)))


def test_swissroll_metrics_proxy():
    m = toy_metrics("swissroll", sample_toy("swissroll", 2_500, seed=0))
    assert m["segments_covered"] == m["n_segments"] == 10
    assert m["high_quality_fraction"] > 0.97
    assert m["kl_segments_uniform"] < 0.05
    half = sample_toy("swissroll", 10_000, seed=0)
    inner = half[np.linalg.norm(half, axis=1) < 1.0][:2_500]  # only the inner turns
    m2 = toy_metrics("swissroll", inner)
    assert m2["segments_covered"] < 10
    assert m2["kl_segments_uniform"] > 0.3


def test_kl_is_undefined_without_high_quality_samples():
    far = np.full((100, 2), 50.0, dtype=np.float32)
    m = toy_metrics("25gaussians", far)
    assert m["high_quality_fraction"] == 0.0 and m["kl_modes_uniform"] is None
