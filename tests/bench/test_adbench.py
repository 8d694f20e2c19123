"""bench/adbench.py's protocol: the split, the ranks and the realized false-positive rate."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
adbench = pytest.importorskip("adbench")
common = pytest.importorskip("common")


def test_split_is_disjoint_and_shared_as_documented() -> None:
    n_normal, n_anom = 1000, 80
    x = np.column_stack([np.arange(n_normal + n_anom, dtype=np.float64),  # row id
                         np.random.default_rng(0).normal(size=n_normal + n_anom)])
    y = np.r_[np.zeros(n_normal, np.int64), np.ones(n_anom, np.int64)]
    s = adbench.make_split(x, y, seed=3)
    # column 0 (the row id) is min-max scaled on the fitting rows: still one value a row
    tr = s.train[:, 0]
    assert tr.min() == 0.0 and tr.max() == 1.0
    assert len(s.train) == 450 and len(s.cal) == 150
    assert len(s.test_y) == 400 + n_anom and s.test_y.sum() == n_anom
    assert (s.test_y[:400] == 0).all()
    groups = [s.train[:, 0], s.cal[:, 0], s.test_x[:, 0]]
    all_vals = np.concatenate(groups)
    assert len(np.unique(all_vals)) == len(all_vals)  # no row in two places
    # same seed, same split; another seed, another one
    np.testing.assert_array_equal(adbench.make_split(x, y, seed=3).train, s.train)
    assert not np.array_equal(adbench.make_split(x, y, seed=4).train, s.train)


def test_group_ranks_average_ties() -> None:
    means = {"a": {"m": 0.9, "p": 0.9, "q": 0.5}, "b": {"m": 0.4, "p": 0.6, "q": 0.8}}
    r = adbench.group_ranks(means, ["m", "p", "q"])
    assert r["a"] == {"m": 1.5, "p": 1.5, "q": 3.0}
    assert r["b"] == {"m": 3.0, "p": 2.0, "q": 1.0}
    assert adbench.ranks_against_peers(means, "m", ["p", "q"]) == {"a": 1.5, "b": 3.0}


def test_realized_fpr_counts_normal_rows_at_or_below_alpha() -> None:
    cal = np.arange(99, dtype=np.float64)  # p = (1 + #{cal >= s}) / 100
    scores = np.array([200.0, 98.5, 50.0, 300.0])  # p: 0.01, 0.01, 0.5, 0.01
    y = np.array([0, 0, 0, 1])
    out = common.realized_fpr(cal, scores, y, (0.01, 0.05))
    assert out["fpr@0.01"] == pytest.approx(2 / 3) and out["tpr@0.01"] == 1.0
