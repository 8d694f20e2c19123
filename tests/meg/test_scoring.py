"""meg.scoring: the conformal p-value guarantee (statistical), its tie handling, and the
rules built on it."""

from __future__ import annotations

import numpy as np
import pytest

from meg.scoring import (
    conformal_pvalues,
    flag,
    flag_by_pvalue,
    min_alpha,
    score_threshold,
    threshold_from_scores,
)

Z = 4.0  # tolerance in binomial standard deviations: a false failure about 1 in 30,000


def _realized_fpr(draw, n_cal: int, alpha: float, reps: int, seed: int,
                  strict: bool = False) -> float:
    """Share of exchangeable normal rows flagged at `alpha`: each repetition draws a fresh
    calibration set and one fresh test row from the same distribution."""
    rng = np.random.default_rng(seed)
    flagged = 0
    for _ in range(reps):
        values = draw(rng, n_cal + 1)
        cal, test = values[:n_cal], values[n_cal:]
        if strict:  # the naive count (#{cal > s}), for contrast
            p = (1.0 + (cal[None, :] > test[:, None]).sum(1)) / (n_cal + 1.0)
        else:
            p = conformal_pvalues(cal, test)
        flagged += int(flag_by_pvalue(p, alpha).sum())
    return flagged / reps


def _tolerance(alpha: float, reps: int) -> float:
    return Z * np.sqrt(alpha * (1 - alpha) / reps)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_false_positive_rate_is_at_most_alpha_on_continuous_scores(alpha: float) -> None:
    reps, n_cal = 20_000, 99
    fpr = _realized_fpr(lambda rng, k: rng.standard_normal(k), n_cal, alpha, reps, seed=1)
    tol = _tolerance(alpha, reps)
    assert fpr <= alpha + tol
    # ... and not needlessly conservative: exactly floor(α(n+1))/(n+1) without ties.
    exact = np.floor(alpha * (n_cal + 1) + 1e-9) / (n_cal + 1)
    assert fpr >= exact - tol


def test_ties_keep_the_guarantee() -> None:
    """Heavily duplicated scores (like KDD's repeated smurf rows): the >= count stays
    under α, where a strict count would flag far more than α."""
    alpha, reps, n_cal = 0.05, 20_000, 99

    def draw(rng: np.random.Generator, k: int) -> np.ndarray:
        # 96% of rows share one score; the rest spread over a few values
        return np.where(rng.random(k) < 0.96, -1.09255, rng.integers(0, 5, k).astype(float))

    assert _realized_fpr(draw, n_cal, alpha, reps, seed=2) <= alpha + _tolerance(alpha, reps)
    assert _realized_fpr(draw, n_cal, alpha, 2_000, seed=3, strict=True) > 0.5


def test_pvalue_formula_and_float_noise_ties() -> None:
    cal = np.array([3.0, 1.0, 2.0, 2.0])  # any order
    p = conformal_pvalues(cal, np.array([0.0, 2.0, 2.5, 3.0, 9.0]))
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 2 / 5, 2 / 5, 1 / 5])
    # the same row scored by another runtime, a float32 ulp lower or higher, is still a tie
    s32 = np.float32(2.0)
    near = np.array([np.nextafter(s32, np.float32(9)), np.nextafter(s32, np.float32(-9))])
    np.testing.assert_allclose(conformal_pvalues(cal, near.astype(np.float64)), [4 / 5, 4 / 5])
    assert conformal_pvalues(cal, np.array([np.inf]))[0] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="empty"):
        conformal_pvalues(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        conformal_pvalues(cal, np.array([np.nan]))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        flag_by_pvalue(p, 0.0)


def test_score_threshold_matches_the_pvalue_rule() -> None:
    rng = np.random.default_rng(0)
    cal = rng.standard_normal(500)
    scores = rng.standard_normal(5_000) * 2
    for alpha in (0.002, 0.01, 0.05, 0.5, 0.99):
        t = score_threshold(cal, alpha)
        assert t is not None
        by_p = flag_by_pvalue(conformal_pvalues(cal, scores), alpha)
        np.testing.assert_array_equal(by_p, scores - 1e-5 * np.maximum(1, np.abs(scores)) > t)
    assert min_alpha(500) == pytest.approx(1 / 501)
    assert score_threshold(cal, 1 / 502) is None  # below 1/(n+1): nothing can be flagged
    assert not flag_by_pvalue(conformal_pvalues(cal, np.array([1e9])), 1 / 502).any()


def test_protocol_top_share_rule() -> None:
    scores = np.arange(100.0)
    t = threshold_from_scores(scores, 0.1)
    assert flag(scores, t).sum() == 10
    with pytest.raises(ValueError):
        threshold_from_scores(scores, 1.5)
