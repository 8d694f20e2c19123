"""meg.support: the nearest-neighbour support score and its combination with the energy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from meg.support import (
    VARIANTS,
    SupportSpec,
    TailECDF,
    agreement_weight,
    build_spec,
    check_variant,
    fit_support,
    load_reference,
    nearest_distance,
    reference_rows,
    save_reference,
    training_distances,
)


def brute_force(reference: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    ref = reference.astype(np.float64)
    d = np.sqrt(((queries.astype(np.float64)[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k - 1]


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_distance_matches_brute_force(k: int) -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 7)).astype(np.float32) * 10.0 + 50.0  # large norms
    queries = np.concatenate([rng.normal(size=(97, 7)) * 10.0 + 50.0, ref[:20]]).astype(np.float32)
    got = nearest_distance(ref, queries, k=k, chunk=16)  # several chunks, a ragged last one
    np.testing.assert_allclose(got, brute_force(ref, queries, k), rtol=1e-9, atol=1e-9)


def test_exact_duplicates_are_at_distance_zero() -> None:
    # float32 ‖q‖² − 2q·r + ‖r‖² alone would leave cancellation noise at these norms.
    rng = np.random.default_rng(1)
    ref = (rng.uniform(size=(500, 121)) * 1000.0).astype(np.float32)
    assert np.all(nearest_distance(ref, ref[::7]) == 0.0)


def test_nearest_distance_rejects_bad_shapes() -> None:
    ref = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="matching"):
        nearest_distance(ref, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        nearest_distance(ref, np.zeros((2, 3), np.float32), k=5)


def test_reference_rows_deduplicate_and_cap_deterministically() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 4)).astype(np.float32)
    train = np.concatenate([base, base, base[:10]])
    ref = reference_rows(train)
    assert ref.dtype == np.float32 and ref.flags.c_contiguous
    assert len(ref) == 50 and len(np.unique(ref, axis=0)) == 50
    capped = reference_rows(train, cap=20, seed=3)
    assert len(capped) == 20 and len(np.unique(capped, axis=0)) == 20
    np.testing.assert_array_equal(capped, reference_rows(train, cap=20, seed=3))
    assert not np.array_equal(capped, reference_rows(train, cap=20, seed=4))
    # every kept row is a training row
    assert np.all(nearest_distance(base, capped) == 0.0)


def test_tail_ecdf_inside_is_the_conformal_p_value() -> None:
    cal = np.array([0.0, 1.0, 1.0, 2.0, 5.0])
    ecdf = TailECDF.from_scores(cal)
    s = np.array([-1.0, 0.0, 0.5, 1.0, 4.9, 5.0])
    want_p = np.array([(1 + (cal >= v).sum()) / 6.0 for v in s])
    np.testing.assert_allclose(ecdf.surprise(s), -np.log(want_p))


def test_tail_ecdf_keeps_ordering_beyond_the_calibration() -> None:
    ecdf = TailECDF.from_scores(np.random.default_rng(4).exponential(size=1000))
    s = np.linspace(-1.0, 30.0, 400)
    sur = ecdf.surprise(s)
    assert np.all(np.diff(sur) >= 0.0)
    beyond = s > ecdf.sorted_scores[-1]
    assert beyond.sum() > 10 and np.all(np.diff(sur[beyond]) > 0.0)  # no plateau
    # exponential data: the fitted tail scale is near the true scale 1
    assert 0.7 < ecdf.tail_scale < 1.3


def test_tail_ecdf_degenerate_calibration_still_defined() -> None:
    ecdf = TailECDF.from_scores(np.zeros(100))
    assert ecdf.tail_scale == 1.0
    assert ecdf.surprise(np.array([0.0]))[0] == 0.0  # p = 1
    assert ecdf.surprise(np.array([0.5]))[0] > np.log(101.0)
    with pytest.raises(ValueError):
        TailECDF.from_scores(np.array([]))


def test_surprise_p_values_are_valid_on_exchangeable_rows() -> None:
    # p = exp(-surprise) is the conformal p-value inside the calibration range, so on
    # rows drawn like the calibration rows P(p <= alpha) <= alpha (up to sampling noise).
    rng = np.random.default_rng(5)
    ecdf = TailECDF.from_scores(rng.normal(size=999))
    p = np.exp(-ecdf.surprise(rng.normal(size=20_000)))
    for alpha in (0.01, 0.05, 0.2):
        realized = float((p <= alpha).mean())
        se = np.sqrt(alpha * (1 - alpha) / 20_000)
        assert realized <= alpha + 4 * se, (alpha, realized)
        assert realized >= alpha - 0.01 - 4 * se  # not needlessly conservative either


def test_combined_score_separates_support_from_density() -> None:
    # Training data: a big cluster and a small one (a "rare type"). A low-density energy
    # ranks the rare cluster like unseen rows; the combined score does not.
    rng = np.random.default_rng(6)
    big = rng.normal(0.0, 0.3, size=(2000, 2))
    rare = rng.normal(5.0, 0.3, size=(40, 2))
    train = np.concatenate([big, rare]).astype(np.float32)

    def energy(x: np.ndarray) -> np.ndarray:  # density of the big cluster only
        return (x**2).sum(1) / 2.0

    model = fit_support(train, energy)
    rare_test = rng.normal(5.0, 0.3, size=(50, 2)).astype(np.float32)
    novel = rng.normal(0.0, 0.3, size=(50, 2)).astype(np.float32) + np.array([-5.0, 5.0], np.float32)
    x = np.concatenate([rare_test, novel])
    combined = model.score("energy+knn", energy(x), x)
    # every novel row scores above every rare-but-seen row
    assert combined[50:].min() > combined[:50].max()
    # while the energy alone cannot tell them apart (both sit 5√2 from the big cluster)
    assert abs(energy(rare_test).mean() - energy(novel).mean()) < 1.0


def test_score_variants() -> None:
    rng = np.random.default_rng(7)
    train = rng.normal(size=(200, 3)).astype(np.float32)
    model = fit_support(train, lambda r: r.sum(1))
    x = rng.normal(size=(10, 3)).astype(np.float32)
    e = x.sum(1)
    np.testing.assert_array_equal(model.score("energy", e, x), e.astype(np.float64))
    np.testing.assert_allclose(model.score("knn", e, x), brute_force(train, x, 1))
    assert model.score("energy+knn", e, x).shape == (10,)
    assert set(VARIANTS) == {"energy", "knn", "energy+knn"}
    with pytest.raises(ValueError, match="energy\\+knn"):
        check_variant("density")


def test_training_distances_leave_each_row_out() -> None:
    # A training row's score is its distance to the nearest OTHER training row: 0 when
    # its value occurs twice, else the nearest distinct other row, brute force.
    rng = np.random.default_rng(10)
    base = rng.normal(size=(120, 3)).astype(np.float32)
    train = np.concatenate([base, base[:15]])  # rows 0..14 occur twice
    ref = reference_rows(train)
    got = training_distances(train, ref)
    d = np.sqrt(((train[:, None, :].astype(np.float64) - train[None].astype(np.float64)) ** 2)
                .sum(-1))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(got, d.min(1), rtol=1e-9, atol=1e-12)
    assert np.all(got[:15] == 0.0) and np.all(got[15:120] > 0.0)
    # a subset of positions; and a capped reference scores rows left out of it like new rows
    np.testing.assert_allclose(training_distances(train, ref, rows=np.array([3, 50])),
                               got[[3, 50]])
    small = reference_rows(train, cap=40, seed=1)
    capped = training_distances(train, small)
    keys = {r.tobytes() for r in small}
    out = np.array([r.tobytes() not in keys for r in train])
    np.testing.assert_allclose(capped[out], brute_force(small, train[out], 1))
    twice = np.arange(len(train)) % 120 < 15
    assert np.all(capped[~out & twice] == 0.0)  # its twin stays among the others
    assert np.all(capped[~out & ~twice] > 0.0)  # occurring once: never its own distance


def test_fit_support_reads_only_the_training_rows() -> None:
    rng = np.random.default_rng(11)
    train = rng.normal(size=(300, 4)).astype(np.float32)
    seen: list[np.ndarray] = []

    def energy(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return (x**2).sum(1)

    model = fit_support(train, energy, max_fit_rows=120)
    rows = {r.tobytes() for r in train}
    assert all(r.tobytes() in rows for x in seen for r in x)
    assert model.energy_ecdf.n == model.knn_ecdf.n == 120


def test_spec_and_reference_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    train = rng.normal(size=(300, 4)).astype(np.float32)
    held = rng.normal(size=(101, 4)).astype(np.float32)

    def energy(x: np.ndarray) -> np.ndarray:
        return (x**2).sum(1)

    spec, ref = build_spec(train, held, energy, default_score="energy+knn", cap=200)
    # the ECDFs come from the training rows, every held-out row calibrates
    assert len(ref) == 200 and len(spec.energy_ecdf) == len(spec.knn_ecdf) == 300
    assert len(spec.calibration["knn"]) == len(spec.calibration["energy+knn"]) == 101
    assert spec.ecdf_rows == "training" and "every held-out" in spec.calibration_source
    save_reference(tmp_path / spec.reference, ref)
    back = SupportSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert back == spec
    model = back.model(load_reference(tmp_path / spec.reference, 4))
    x = rng.normal(size=(20, 4)).astype(np.float32)
    np.testing.assert_allclose(model.score("knn", energy(x), x), brute_force(ref, x, 1))
    # the stored calibration scores are the held-out rows' scores under the stored model
    np.testing.assert_allclose(np.sort(model.score("energy+knn", energy(held), held)),
                               spec.calibration["energy+knn"])


def test_old_support_entries_still_load() -> None:
    # Written before ecdf_rows/energy_weight: ECDFs from one half of the held-out rows,
    # calibration from the other (valid: disjoint halves), the equal-weight combination.
    old = {"reference": "support_reference.npy", "k": 1, "energy_ecdf": [0.0, 1.0],
           "energy_tail": 1.0, "knn_ecdf": [0.0, 2.0], "knn_tail": 1.0,
           "calibration": {"knn": [0.5], "energy+knn": [0.1]}, "default_score": "energy+knn"}
    spec = SupportSpec.from_json(old)
    assert spec.ecdf_rows == "held-out half" and spec.energy_weight == 1.0
    assert "second half" in spec.calibration_source
    with pytest.raises(ValueError, match="ecdf_rows"):
        SupportSpec.from_json({**old, "ecdf_rows": "test rows"})
    with pytest.raises(ValueError, match="energy_weight"):
        SupportSpec.from_json({**old, "energy_weight": -1.0})


def test_agreement_weight_is_clipped_spearman() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(13)
    e = rng.integers(0, 6, size=500).astype(np.float64)  # ties, as training rows have
    d = e + rng.normal(size=500) * 3.0
    d[:100] = 0.0  # duplicated rows: distance 0
    want = float(spearmanr(e, d)[0])
    assert 0.0 < want < 1.0
    assert agreement_weight(e, d) == pytest.approx(want, abs=1e-12)
    assert agreement_weight(e, -d) == 0.0  # disagreement: the energy drops out
    assert agreement_weight(np.zeros(10), np.arange(10.0)) == 1.0  # undefined: equal weights
    # fit_support weighs the energy by it, on the training rows it fitted the ECDFs on
    train = rng.normal(size=(300, 3)).astype(np.float32)

    def energy(x: np.ndarray) -> np.ndarray:
        return (x**2).sum(1)

    model = fit_support(train, energy)
    assert model.energy_weight == pytest.approx(
        agreement_weight(energy(train), training_distances(train, reference_rows(train))))
    # with duplicated rows: one vote per distinct row
    dup = np.concatenate([train, np.repeat(train[:5], 200, axis=0)])
    model_dup = fit_support(dup, energy)
    assert model_dup.energy_weight == pytest.approx(
        agreement_weight(energy(np.unique(dup, axis=0)),
                         training_distances(np.unique(dup, axis=0), reference_rows(dup))))
    x = rng.normal(size=(7, 3)).astype(np.float32)
    d_x = model.distance(x)
    np.testing.assert_allclose(
        model.combine(energy(x), d_x),
        model.energy_weight * model.energy_ecdf.surprise(energy(x)) + model.knn_ecdf.surprise(d_x))


@pytest.mark.parametrize("n_cal", [39, 75, 199])
def test_conformal_guarantee_on_fresh_exchangeable_rows(n_cal: int) -> None:
    # The conformal guarantee of the combined score, built as a bundle builds it:
    # E[FPR] <= alpha over draws of the calibration rows, for fresh normal rows drawn like
    # them. Every draw refits nothing that reads the calibration rows, so the expected
    # realized rate is exactly floor(alpha (n+1)) / (n+1) (continuous scores): not
    # needlessly conservative either. 400 draws of n_cal calibration + 500 fresh rows.
    from meg.scoring import conformal_pvalues

    rng = np.random.default_rng(12)
    train = rng.standard_t(3, size=(400, 3)).astype(np.float32)

    def energy(x: np.ndarray) -> np.ndarray:
        return np.log1p((x**2).sum(1))

    model = fit_support(train, energy, cap=300)
    alpha = 0.05
    rates = []
    for _ in range(400):
        cal = rng.standard_t(3, size=(n_cal, 3)).astype(np.float32)
        fresh = rng.standard_t(3, size=(500, 3)).astype(np.float32)
        p = conformal_pvalues(model.score("energy+knn", energy(cal), cal),
                              model.score("energy+knn", energy(fresh), fresh))
        rates.append(float((p <= alpha).mean()))
    exact = np.floor(alpha * (n_cal + 1)) / (n_cal + 1)
    se = np.std(rates) / np.sqrt(len(rates))
    assert np.mean(rates) <= alpha + 4 * se
    assert abs(np.mean(rates) - exact) <= 4 * se


def test_load_reference_refuses_anything_but_plain_float32_rows(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        load_reference(tmp_path / "obj.npy", 1)
    np.save(tmp_path / "f64.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="float32"):
        load_reference(tmp_path / "f64.npy", 4)
    np.save(tmp_path / "f32.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="5 columns"):
        load_reference(tmp_path / "f32.npy", 5)
    with pytest.raises(ValueError, match="plain"):
        SupportSpec("../x.npy", 1, [0.0], 1.0, [0.0], 1.0, {})


def test_support_model_distance_with_reference_rows_among_the_queries() -> None:
    # Rows equal to a reference row skip the search (distance 0); the rest are searched.
    rng = np.random.default_rng(9)
    train = rng.normal(size=(400, 5)).astype(np.float32)
    model = fit_support(train, lambda r: r.sum(1))
    x = np.concatenate([train[::9], rng.normal(size=(30, 5)).astype(np.float32), -train[:3]])
    np.testing.assert_allclose(model.distance(x), brute_force(model.reference, x, 1),
                               rtol=1e-9, atol=1e-12)
    assert np.all(model.distance(train[::9]) == 0.0)
