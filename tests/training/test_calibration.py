"""Calibration on the training side: calibration rows stay unseen (checkpoint selection
reads other rows), a calibration set too small for the target is refused before training,
and evaluation's calibrated metrics are the service's rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from megtest import TINY

from meg.scoring import conformal_pvalues, flag_by_pvalue
from training.config import ConfigError, apply_overrides, load_recipe
from training.data import CalibrationSplit, check_calibration_size, hold_out
from training.data.digits import load_digits_dataset
from training.evaluate import anomaly_metrics
from training.train import make_probe, train


def test_checkpoint_selection_never_reads_calibration_rows() -> None:
    ds = load_digits_dataset(9, seed=0)
    probe = make_probe(ds, latent_dim=4, device=torch.device("cpu"), seed=0)
    assert probe is not None
    seen = {r.tobytes() for r in probe.val.numpy()}
    assert seen <= {r.tobytes() for r in ds.select}
    calibration_only = {r.tobytes() for r in ds.val} - {r.tobytes() for r in ds.select}
    assert not seen & calibration_only
    ds.select = None
    assert make_probe(ds, 4, torch.device("cpu"), 0) is None  # no selection, not val


def test_hold_out_parts_are_disjoint_and_sized() -> None:
    rows = np.arange(1000, 2000)
    held = hold_out(rows, CalibrationSplit(fraction=0.2, max_rows=150), seed=3)
    assert (len(held.calibration), len(held.selection), len(held.train)) == (150, 100, 750)
    assert len(set(held.train) | set(held.calibration) | set(held.selection)) == 1000
    again = hold_out(rows, CalibrationSplit(fraction=0.2, max_rows=150), seed=3)
    np.testing.assert_array_equal(again.calibration, held.calibration)
    assert (np.diff(held.train) > 0).all()  # training rows keep their order


def test_too_small_a_calibration_set_is_refused_before_training(tmp_path) -> None:
    check_calibration_size(99, 0.01)  # 1/(99+1): just enough
    with pytest.raises(ValueError, match="at least 99 calibration rows"):
        check_calibration_size(98, 0.01)
    cfg = apply_overrides(load_recipe("digits"), [*TINY, "calibrate.target_fpr=0.001"])
    with pytest.raises(ValueError, match="calibrate.target_fpr=0.001 needs at least 999"):
        train(cfg, None, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match="target_fpr"):
        apply_overrides(load_recipe("digits"), ["calibrate.target_fpr=1.5"])


def test_calibrated_metrics_are_the_service_rule() -> None:
    rng = np.random.default_rng(0)
    cal = rng.normal(size=400)
    scores = np.r_[rng.normal(size=2000), rng.normal(3.0, 1.0, size=500)]
    labels = np.r_[np.zeros(2000), np.ones(500)]
    m = anomaly_metrics(scores, labels, 0.2, calibration_scores=cal, alphas=(0.01, 0.05))
    for alpha in (0.01, 0.05):
        flags = flag_by_pvalue(conformal_pvalues(cal, scores), alpha)
        assert m[f"fpr@{alpha:g}"] == flags[labels == 0].mean()
        assert m[f"recall@{alpha:g}"] == flags[labels == 1].mean()
        # fresh normal rows: within binomial spread of alpha (calibration and test draws)
        assert m[f"fpr@{alpha:g}"] <= alpha + 4 * np.sqrt(alpha * (1 - alpha) * (1 / 2000 + 1 / 400))
    assert m["n_calibration"] == 400 and "f1" in m and "auroc" in m


def test_nids_recipe_trains_on_normal_traffic() -> None:
    cfg = load_recipe("nids")
    assert cfg.data.source == "nids" and cfg.calibrate.target_fpr == 0.01
    assert load_recipe("kddcup99").data.source == "kddcup99"  # the paper's protocol stays
