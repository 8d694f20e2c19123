"""Anomaly scoring: a score (the energy today; higher = more anomalous) and the rules that
turn scores into flags. The rules live here and nowhere else: training's evaluation, the
benchmarks and the service all call these functions.

Two ways to flag a row:

- **Calibrated (the default):** a conformal p-value against held-out normal scores
  (`conformal_pvalues`) and a target false-positive rate α (`flag_by_pvalue`: p <= α).
  If the calibration scores and a new normal row's score are exchangeable (drawn from the
  same distribution, the calibration rows unseen in training), P(p <= α) <= α: at most a
  share α of normal rows is flagged, whatever the score's distribution, ties included.
- **Explicit threshold:** flag score >= threshold (`flag`).

`threshold_from_scores` is the benchmark protocols' rule (flag the top share of a *test*
set's scores, as the MEG paper does); it needs the test set, so serving never uses it.
"""

from __future__ import annotations

import numpy as np

# Scores that differ from a calibration score by no more than float32 rounding count as
# ties. The same row scored by another runtime, batch size or device can move by a few
# ulps; treating such near-ties as ties only raises p-values, so the guarantee stands.
TIE_RTOL = 1e-5


def _as_scores(values: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(a).any():
        raise ValueError(f"{what} contain NaN")
    return a


def sorted_calibration(calibration_scores: np.ndarray) -> np.ndarray:
    """Calibration scores as a sorted float64 array (checked: non-empty, finite)."""
    cal = _as_scores(calibration_scores, "calibration scores")
    if cal.size == 0:
        raise ValueError("the calibration set is empty")
    if not np.isfinite(cal).all():
        raise ValueError("calibration scores must be finite")
    if cal.size > 1 and not bool(np.all(cal[1:] >= cal[:-1])):
        cal = np.sort(cal)
    return cal


def conformal_pvalues(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Split-conformal p-values (N,) of `scores` against `calibration_scores` (n,):

        p = (1 + #{calibration scores >= s}) / (n + 1)

    (with near-ties within TIE_RTOL counted as >=). Small p = unusual among normal data.
    For a normal row exchangeable with the calibration rows, P(p <= α) <= α for every α,
    ties included: the >= count makes tied rows conservative. p lies in [1/(n+1), 1].
    `calibration_scores` may be in any order (sorted ones are used as they are)."""
    cal = sorted_calibration(calibration_scores)
    s = _as_scores(scores, "scores")
    tol = TIE_RTOL * np.maximum(1.0, np.abs(np.where(np.isfinite(s), s, 0.0)))
    at_least = cal.size - np.searchsorted(cal, s - tol, side="left")  # #{cal >= s - tol}
    return (1.0 + at_least) / (cal.size + 1.0)


def check_alpha(alpha: float) -> float:
    """A target false-positive rate must lie in (0, 1)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"target false-positive rate must be in (0, 1), got {alpha}")
    return float(alpha)


def flag_by_pvalue(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """is_anomaly (N,) bool: p <= α, α being the target false-positive rate."""
    return np.asarray(pvalues) <= check_alpha(alpha)


def min_alpha(n_calibration: int) -> float:
    """The smallest p-value n calibration scores can give, 1/(n+1): a target rate below
    it can never flag anything."""
    return 1.0 / (int(n_calibration) + 1.0)


def score_threshold(calibration_scores: np.ndarray, alpha: float) -> float | None:
    """The score the p-value rule at `alpha` is equivalent to: rows scoring above it
    (beyond the tie tolerance) are flagged, rows at or below it are not. None when
    `alpha` < 1/(n+1) (nothing can be flagged)."""
    cal = sorted_calibration(calibration_scores)
    n = cal.size
    # p <= α  <=>  #{cal >= s} <= k with k = floor(α(n+1)) - 1  <=>  s above the (k+1)-th largest.
    # α < 1 keeps k <= n - 1.
    k = int(np.floor(check_alpha(alpha) * (n + 1) + 1e-9)) - 1
    if k < 0:
        return None
    return float(cal[n - 1 - k])


def percentile_rank(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each score's percentile (0-100) among the calibration scores: the share of them
    strictly below it (100 * (1 - #{cal >= s} / n), ignoring the tie tolerance)."""
    cal = sorted_calibration(calibration_scores)
    return 100.0 * np.searchsorted(cal, _as_scores(scores, "scores"), side="left") / cal.size


def check_contamination(contamination: float) -> float:
    if not 0.0 < contamination < 1.0:
        raise ValueError(f"contamination must be in (0, 1), got {contamination}")
    return float(contamination)


def threshold_from_scores(scores: np.ndarray, contamination: float) -> float:
    """The benchmark protocols' rule: the score above which the top `contamination` share
    of `scores` (a test set) lies. Not a calibrated rule: it needs the test set."""
    check_contamination(contamination)
    return float(np.percentile(np.asarray(scores, dtype=np.float64), 100.0 * (1.0 - contamination)))


def flag(scores: np.ndarray, threshold: float) -> np.ndarray:
    """is_anomaly: score at or above an explicit threshold."""
    return np.asarray(scores) >= threshold

