"""Datasets for meg's recipes. Every loader returns a `Dataset`: flat float32 rows in
model space plus what evaluation and the bundle need (held-out normal rows for
calibration, a labelled test set, the data spec and the preprocessing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from meg.bundle import DataSpec
from meg.preprocessing import Preprocessing


@dataclass
class Dataset:
    name: str
    train: np.ndarray  # (N, D) float32, model space
    val: np.ndarray  # (M, D) held-out normal (inlier) rows: calibration and early checks
    test_x: np.ndarray | None  # (T, D) labelled test rows, or None (toys)
    test_y: np.ndarray | None  # (T,) int, 1 = anomaly
    spec: DataSpec
    preprocessing: Preprocessing | None = None
    contamination: float = 0.05  # default share of rows flagged as anomalies
    info: dict[str, Any] | None = None  # loader facts worth recording (counts, split seed, centres)

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])
