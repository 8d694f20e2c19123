"""sklearn digits and the held-out-digit protocol."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.digits import held_out_split, load_digits_dataset


def _labels():
    from sklearn.datasets import load_digits

    return load_digits().target


def test_held_out_protocol_by_row_identity():
    digits = np.repeat(np.arange(10), 50)  # 50 rows per digit
    x = np.arange(len(digits), dtype=np.float32)[:, None]  # row i holds i
    train, val, test_x, test_y, contamination, info, select = held_out_split(x, digits, 4, seed=0)
    tr, va, se, te = (a[:, 0].astype(int) for a in (train, val, select, test_x))
    assert (digits[tr] != 4).all() and (digits[va] != 4).all()  # no anomaly digit
    # 80/20 of 450 normal rows into fitting and test-normal; of the 360 fitting rows 20%
    # are held out to calibrate and 10% to select a checkpoint: all four sets disjoint
    assert len(tr) == 252 and len(va) == 72 and len(se) == 36
    parts = [set(tr), set(va), set(se), set(te)]
    assert sum(map(len, parts)) == len(set().union(*parts))
    test_normal = te[:90]
    assert set(tr) | set(va) | set(se) | set(test_normal) == set(np.flatnonzero(digits != 4))
    assert set(te[90:]) == set(np.flatnonzero(digits == 4))  # test = test-normal + anomalies
    np.testing.assert_array_equal(test_y, (digits[te] == 4).astype(int))
    assert contamination == pytest.approx(50 / 140)
    assert info == {
        "anomaly_digit": 4,
        "seed": 0,
        "train": 252,
        "val": 72,
        "test": 140,
        "test_anomalies": 50,
    }
    # the test set does not depend on the calibration share
    from training.data import CalibrationSplit

    other = held_out_split(x, digits, 4, seed=0, calibration=CalibrationSplit(fraction=0.5))
    np.testing.assert_array_equal(other[2], test_x)
    assert len(other[1]) == 180
    again = held_out_split(x, digits, 4, seed=0)
    np.testing.assert_array_equal(again[0], train)
    other = held_out_split(x, digits, 4, seed=1)
    assert not np.array_equal(other[0], train)


def test_no_anomaly_digit():
    digits = np.repeat(np.arange(10), 20)
    x = np.arange(len(digits), dtype=np.float32)[:, None]
    for none in (None, -1):
        train, val, test_x, test_y, contamination, info, select = held_out_split(
            x, digits, none, 0)
        assert len(train) == 140 and len(val) == 40 and len(select) == 20  # 20% and 10% held out
        assert test_x is None and test_y is None and contamination == 0.05
        assert set(train[:, 0]) | set(val[:, 0]) | set(select[:, 0]) == set(x[:, 0])
    with pytest.raises(ValueError, match="anomaly_digit"):
        held_out_split(x, digits, 10, 0)


def test_load_digits_dataset():
    labels = _labels()
    n9 = int((labels == 9).sum())
    n_normal = len(labels) - n9
    ds = load_digits_dataset(9, seed=0)
    n_fit = round(0.8 * n_normal)
    n_cal, n_sel = round(0.2 * n_fit), round(0.1 * n_fit)
    assert ds.train.shape == (n_fit - n_cal - n_sel, 64) and ds.train.dtype == np.float32
    assert ds.val.shape == (n_cal, 64) and ds.select.shape == (n_sel, 64)
    assert ds.test_x.shape == (n_normal - n_fit + n9, 64)
    assert int(ds.test_y.sum()) == n9
    assert ds.contamination == pytest.approx(n9 / len(ds.test_y))
    assert ds.spec.kind == "image" and ds.spec.shape == [1, 8, 8]
    assert ds.spec.value_range == [-1.0, 1.0]
    assert ds.spec.feature_names[0] == "px0" and ds.spec.feature_names[-1] == "px63"
    assert ds.train.min() == -1.0 and ds.train.max() == 1.0
    assert ds.info["anomaly_digit"] == 9 and ds.info["rows"] == len(labels)


def test_digits_train_has_no_anomaly_digit():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = load_digits_dataset(3, seed=5)
    scaled = (bunch.data / 8.0 - 1.0).astype(np.float32)
    threes = {r.tobytes() for r in scaled[bunch.target == 3]}
    others = {r.tobytes() for r in scaled[bunch.target != 3]}
    train_rows = {r.tobytes() for r in ds.train}
    assert not (train_rows & threes) - others  # no row that only a 3 has


def test_digits_without_test():
    ds = load_digits_dataset(None)
    assert ds.test_x is None and ds.test_y is None
    n = len(_labels())
    assert len(ds.train) + len(ds.val) + len(ds.select) == n
    assert len(ds.val) == round(0.2 * n) and len(ds.select) == round(0.1 * n)
