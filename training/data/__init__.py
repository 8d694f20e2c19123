"""Datasets for meg's recipes. Every loader returns a `Dataset`: flat float32 rows in
model space plus what evaluation and the bundle need (held-out rows of the training class
for calibration, a labelled test set, the data spec and the preprocessing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from meg.bundle import DataSpec
from meg.preprocessing import Preprocessing


@dataclass
class Dataset:
    name: str
    train: np.ndarray  # (N, D) float32, model space
    # (M, D) the calibration rows: rows of the training class that training never sees
    # and checkpoint selection never reads, disjoint from the test rows (so the flags'
    # false-positive rate can be measured on test rows the calibration never saw). Also
    # drawn in previews.
    val: np.ndarray
    test_x: np.ndarray | None  # (T, D) labelled test rows, or None (toys)
    test_y: np.ndarray | None  # (T,) int, 1 = anomaly
    spec: DataSpec
    preprocessing: Preprocessing | None = None
    # The benchmark protocols' rule only: the top share of *test* scores flagged for the
    # paper-style precision / recall / F1 (KDD: 20%; else the test set's anomaly share).
    # Serving never uses it: bundles flag by calibrated p-values (meg.scoring).
    contamination: float = 0.05
    info: dict[str, Any] | None = None  # loader facts worth recording (counts, split seed, centres)
    # (S, D) held-out rows of the training class for checkpoint selection, disjoint from
    # train, val and test: choosing a checkpoint by rows makes them no longer unseen, so
    # selection must not read the calibration rows. None: select on `val`'s distribution
    # is impossible, and selection falls back to the last step.
    select: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


@dataclass(frozen=True)
class CalibrationSplit:
    """How many of the training class's training rows are held out: to calibrate,
    round(fraction * n), at least 1, at most `max_rows`; for checkpoint selection,
    round(select_fraction * n), at most `select_max_rows` (at least one row is left to
    train on). Which rows: a seeded random subset."""

    fraction: float = 0.2
    max_rows: int = 20_000
    select_fraction: float = 0.1
    select_max_rows: int = 2048  # what a selection check scores (training.train.PROBE_ROWS)

    def size(self, n: int) -> int:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"calibration fraction must be in (0, 1), got {self.fraction}")
        return max(1, min(int(round(self.fraction * n)), self.max_rows, n - 1))

    def select_size(self, n: int) -> int:
        """Selection rows out of n, after the calibration rows are taken."""
        if not 0.0 <= self.select_fraction < 1.0:
            raise ValueError(f"select fraction must be in [0, 1), got {self.select_fraction}")
        left = n - self.size(n) - 1  # keep one row to train on
        return max(0, min(int(round(self.select_fraction * n)), self.select_max_rows, left))


class HeldOut(NamedTuple):
    train: np.ndarray  # row positions left to train on, in their given order
    calibration: np.ndarray  # row positions held out to calibrate, in their given order
    selection: np.ndarray  # row positions held out for checkpoint selection, in order


def hold_out(rows: np.ndarray, split: CalibrationSplit, seed: int) -> HeldOut:
    """Split row positions `rows` (at least 2) into training, calibration and selection
    rows. A random subset of exchangeable rows is exchangeable with the rest, which is
    what the conformal guarantee needs. Its own random stream, so loaders' other draws
    (test sets, protocol splits) do not change with it."""
    rows = np.asarray(rows)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 training rows to hold some out, got {len(rows)}")
    order = np.random.default_rng([seed, 0xCA11B]).permutation(len(rows))
    n_cal, n_sel = split.size(len(rows)), split.select_size(len(rows))
    part = np.zeros(len(rows), dtype=np.int8)  # 0 train, 1 calibration, 2 selection
    part[order[:n_cal]] = 1
    part[order[n_cal:n_cal + n_sel]] = 2
    return HeldOut(rows[part == 0], rows[part == 1], rows[part == 2])


def check_calibration_size(n_calibration: int, target_fpr: float) -> None:
    """Refuse a calibration set too small for the target false-positive rate: with n
    scores the smallest p-value is 1/(n+1), so a target below it could never flag."""
    if target_fpr * (n_calibration + 1) < 1.0:
        need = int(np.ceil(1.0 / target_fpr)) - 1
        raise ValueError(
            f"calibrate.target_fpr={target_fpr:g} needs at least {need} calibration rows, "
            f"but the data holds out {n_calibration}: raise calibrate.target_fpr or "
            f"calibrate.fraction (or use more data)")
