"""scikit-learn's 8x8 digits (1,797 images, bundled with sklearn: no download) with the
held-out-digit anomaly protocol that MNIST uses too.

Held-out digit d: rows of digit d are the anomalies (label 1). The other digits are
split 80/20 with a fixed seed into train and test-normal; test = test-normal + every
row of digit d. A share of the training rows (`CalibrationSplit`, default 20%) is then
held out as `val`, the calibration rows: never trained on, disjoint from the test rows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from meg.bundle import DataSpec
from training.data import CalibrationSplit, Dataset, hold_out

NO_TEST_CONTAMINATION = 0.05


def _split_info(anomaly_digit: int | None, seed: int, **counts: int) -> dict[str, Any]:
    return {"anomaly_digit": anomaly_digit, "seed": seed, **counts}


class DigitSplit(NamedTuple):
    train: np.ndarray
    val: np.ndarray  # calibration rows
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    contamination: float
    info: dict[str, Any]
    select: np.ndarray  # checkpoint-selection rows


def held_out_split(
    x: np.ndarray,
    digits: np.ndarray,
    anomaly_digit: int | None,
    seed: int,
    train_fraction: float = 0.8,
    calibration: CalibrationSplit = CalibrationSplit(),
) -> DigitSplit:
    """Split rows `x` with class labels `digits` by the held-out-digit protocol.

    `val` holds the calibration rows and `select` the checkpoint-selection rows, both
    held out of the normal training rows by `calibration` (disjoint from each other, from
    train and from test). With `anomaly_digit` None or -1 there are no anomalies and no
    test set: every row is train, val or select. Test rows come normal first, then
    anomalies."""
    if anomaly_digit == -1:
        anomaly_digit = None
    if anomaly_digit is not None and anomaly_digit not in range(10):
        raise ValueError(f"anomaly_digit must be 0..9, -1 or None, got {anomaly_digit!r}")
    rng = np.random.default_rng(seed)
    if anomaly_digit is None:
        rows = hold_out(rng.permutation(len(x)), calibration, seed)
        train, val = x[rows.train], x[rows.calibration]
        info = _split_info(None, seed, train=len(train), val=len(val), test=0, test_anomalies=0)
        return DigitSplit(train, val, None, None, NO_TEST_CONTAMINATION, info, x[rows.selection])
    is_anomaly = digits == anomaly_digit
    normal_idx = np.flatnonzero(~is_anomaly)
    normal_idx = normal_idx[rng.permutation(len(normal_idx))]
    n_train = int(round(train_fraction * len(normal_idx)))
    train_idx, test_normal_idx = normal_idx[:n_train], normal_idx[n_train:]
    rows = hold_out(train_idx, calibration, seed)
    anomaly_idx = np.flatnonzero(is_anomaly)
    train = x[rows.train]
    val = x[rows.calibration]
    test_x = np.concatenate([x[test_normal_idx], x[anomaly_idx]])
    test_y = np.concatenate(
        [np.zeros(len(test_normal_idx), np.int64), np.ones(len(anomaly_idx), np.int64)]
    )
    contamination = float(len(anomaly_idx) / len(test_y))
    info = _split_info(
        anomaly_digit,
        seed,
        train=len(train),
        val=len(val),
        test=len(test_y),
        test_anomalies=len(anomaly_idx),
    )
    return DigitSplit(train, val, test_x, test_y, contamination, info, x[rows.selection])


def image_dataset(
    name: str,
    pixels: np.ndarray,
    digits: np.ndarray,
    side: int,
    anomaly_digit: int | None,
    seed: int,
    calibration: CalibrationSplit = CalibrationSplit(),
) -> Dataset:
    """Flat [-1, 1] float32 `pixels` (N, side*side) with class labels as a held-out-digit
    image Dataset of shape [1, side, side]."""
    split = held_out_split(pixels, digits, anomaly_digit, seed, calibration=calibration)
    train, val, test_x, test_y, contamination, info, select = split
    info["rows"] = int(len(pixels))
    spec = DataSpec(
        kind="image",
        shape=[1, side, side],
        feature_names=[f"px{i}" for i in range(side * side)],
        value_range=[-1.0, 1.0],
    )
    return Dataset(
        name=name,
        train=train,
        val=val,
        test_x=test_x,
        test_y=test_y,
        spec=spec,
        preprocessing=None,
        contamination=contamination,
        info=info,
        select=select,
    )


def load_digits_dataset(anomaly_digit: int | None = 9, seed: int = 0,
                        calibration: CalibrationSplit = CalibrationSplit()) -> Dataset:
    """sklearn's 8x8 digits, pixels 0..16 scaled to [-1, 1], shape [1, 8, 8], split by
    the held-out-digit protocol (`anomaly_digit` None or -1: train/val only, no test)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (np.asarray(bunch.data, dtype=np.float32) / 8.0 - 1.0).astype(np.float32)
    digits = np.asarray(bunch.target, dtype=np.int64)
    return image_dataset("digits", pixels, digits, 8, anomaly_digit, seed, calibration)
