"""Anomaly scoring: the energy is the score (higher = more anomalous). The threshold
is computed here and nowhere else, by training's evaluation and by the service alike."""

from __future__ import annotations

import numpy as np

from meg.bundle import Calibration


def check_contamination(contamination: float) -> float:
    if not 0.0 < contamination < 1.0:
        raise ValueError(f"contamination must be in (0, 1), got {contamination}")
    return float(contamination)


def threshold_from_scores(scores: np.ndarray, contamination: float) -> float:
    """The score above which the top `contamination` share of `scores` lies."""
    check_contamination(contamination)
    return float(np.percentile(np.asarray(scores, dtype=np.float64), 100.0 * (1.0 - contamination)))


def threshold_from_calibration(cal: Calibration, contamination: float | None = None) -> float:
    """The threshold flagging `contamination` (default: the bundle's) of normal data."""
    c = check_contamination(cal.contamination if contamination is None else contamination)
    return float(np.interp(100.0 * (1.0 - c), cal.percentiles, cal.values))


def percentile_rank(cal: Calibration, scores: np.ndarray) -> np.ndarray:
    """Each score's percentile (0-100) among the calibration energies of normal data."""
    return np.interp(np.asarray(scores, dtype=np.float64), cal.values, cal.percentiles)


def flag(scores: np.ndarray, threshold: float) -> np.ndarray:
    """is_anomaly: score at or above the threshold."""
    return np.asarray(scores) >= threshold
