"""KDD Cup 99 (10%) by the paper's protocol, on the real file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meg.preprocessing import Preprocessing, RecordError
from training.data.kdd import (
    CATEGORICAL,
    FEATURES,
    KDD_COLUMNS,
    KDD_FILE,
    _read_kdd,
    cap_anomalies,
    load_kdd,
    row_labels,
    split_rows,
)

REAL = Path(os.environ.get("MEG_DATA_DIR", "data")) / KDD_FILE

# Counts of the 10% file, computed once from the file itself.
ROWS = 494_021
NORMAL_ROWS = 97_278  # label "normal." (label 1, the anomaly class)
FIT_ROWS = 198_361  # label-0 rows of df.sample(frac=0.5, random_state=42)
CAL_ROWS = 20_000  # of those, held out to calibrate (20%, capped at calibrate.max_rows)
SELECT_ROWS = 2_048  # and to select a checkpoint (10%, capped)
TRAIN_ROWS = FIT_ROWS - CAL_ROWS - SELECT_ROWS
TEST_ROWS = 247_011
TEST_ANOMALIES = 48_629


@pytest.fixture(scope="module")
def kdd():
    if not REAL.is_file():
        pytest.skip(f"{KDD_FILE} not under MEG_DATA_DIR (set MEG_DATA_DIR=/work/shared/data)")
    t0 = time.perf_counter()
    ds = load_kdd(seed=42)
    print(f"load_kdd: {time.perf_counter() - t0:.2f}s")
    return ds


@pytest.fixture(scope="module")
def paper_split(kdd):
    """The paper's literal pandas steps, to compare the loader's rows against."""
    df = _read_kdd(str(REAL))
    df_train = df.sample(frac=0.5, random_state=42)
    df_test = df.loc[~df.index.isin(df_train.index)]
    return (
        df_train[df_train["label"] != "normal."],
        df_test[df_test["label"] != "normal."],
        df_test[df_test["label"] == "normal."],
    )


def test_columns():
    assert len(KDD_COLUMNS) == 42 and KDD_COLUMNS[-1] == "label"
    assert len(FEATURES) == 41 and set(CATEGORICAL) <= set(FEATURES)


def test_counts(kdd):
    info = kdd.info
    assert info["rows"] == ROWS
    assert info["label1_rows"] == NORMAL_ROWS
    assert info["label0_rows"] == ROWS - NORMAL_ROWS
    assert info["train_rows"] == TRAIN_ROWS == len(kdd.train)
    assert info["test_rows"] == TEST_ROWS == len(kdd.test_x) == len(kdd.test_y)
    assert info["test_anomalies"] == TEST_ANOMALIES == int(kdd.test_y.sum())
    assert info["calibration_rows"] == CAL_ROWS == len(kdd.val)
    assert info["selection_rows"] == SELECT_ROWS == len(kdd.select)


def test_shapes_and_spec(kdd):
    assert kdd.train.shape[1] == 121 and kdd.train.dtype == np.float32
    assert kdd.spec.kind == "tabular" and kdd.spec.shape == [121]
    assert kdd.spec.feature_names == kdd.preprocessing.column_names()
    assert len(set(kdd.spec.feature_names)) == 121
    assert [f.name for f in kdd.preprocessing.features] == list(FEATURES)
    assert kdd.preprocessing.unknown_category == "zeros"
    for f in kdd.preprocessing.features:
        assert f.kind == ("categorical" if f.name in CATEGORICAL else "numeric")
        if f.kind == "categorical":
            assert f.categories == sorted(f.categories)
    widths = {f.name: f.width for f in kdd.preprocessing.features if f.kind == "categorical"}
    assert widths == {
        "protocol_type": 3,
        "service": 66,
        "flag": 11,
        "land": 2,
        "logged_in": 2,
        "is_host_login": 1,
        "is_guest_login": 2,
    }
    assert kdd.contamination == 0.2


def test_protocol(kdd, paper_split):
    share = kdd.test_y.mean()
    assert share <= 0.2 and share == pytest.approx(0.197, abs=5e-4)
    assert kdd.train.min() == 0.0 and kdd.train.max() == 1.0
    n0 = TEST_ROWS - TEST_ANOMALIES
    assert (kdd.test_y[:n0] == 0).all() and (kdd.test_y[n0:] == 1).all()
    train0, test0, test1 = paper_split
    assert len(train0) == len(kdd.train) + len(kdd.val) + len(kdd.select) and len(test0) == n0
    assert len(test1) == TEST_ANOMALIES  # all of them fit under the 20% cap
    # calibration rows: label-0 rows of the training half, disjoint from train and test
    split = split_rows(_read_kdd(str(REAL)), 42)
    parts = [set(split.train), set(split.calibration), set(split.selection)]
    assert sum(map(len, parts)) == len(set().union(*parts))
    assert set().union(*parts) == set(train0.index)
    assert set(split.calibration).isdisjoint(test0.index)


def _records(frame: pd.DataFrame) -> list[dict]:
    # Through JSON, as the service receives them.
    return json.loads(json.dumps(frame[list(FEATURES)].to_dict(orient="records")))


def test_transform_records_matches_model_rows(kdd, paper_split):
    train0, test0, test1 = paper_split
    df = _read_kdd(str(REAL))
    split = split_rows(df, 42)
    pre = kdd.preprocessing
    np.testing.assert_array_equal(
        pre.transform_records(_records(df.iloc[split.train[:300]])), kdd.train[:300]
    )
    np.testing.assert_array_equal(
        pre.transform_records(_records(df.iloc[split.calibration[-200:]])), kdd.val[-200:]
    )
    n0 = len(test0)
    np.testing.assert_array_equal(
        pre.transform_records(_records(test0.iloc[-200:])), kdd.test_x[n0 - 200 : n0]
    )
    np.testing.assert_array_equal(
        pre.transform_records(_records(test1.iloc[:200])), kdd.test_x[n0 : n0 + 200]
    )
    # The manifest stores the preprocessing as JSON: it must survive the trip.
    again = Preprocessing.from_json(json.loads(json.dumps(pre.to_json())))
    np.testing.assert_array_equal(
        again.transform_records(_records(df.iloc[split.train[:50]])), kdd.train[:50]
    )


def test_unknown_category_is_scored_or_an_error(kdd, paper_split):
    """Real traffic sends values the file never held: scored with an all-zero block and
    reported by default; rejected under the strict policy."""
    recs = _records(paper_split[0].iloc[:3])
    recs[1]["service"] = "gopher2"
    recs[2]["is_host_login"] = 1  # the file only ever holds 0
    enc = kdd.preprocessing.encode_records(recs)
    assert enc.unseen == [[], ["service"], ["is_host_login"]]
    np.testing.assert_array_equal(enc.x[0], kdd.preprocessing.transform_records(recs[:1])[0])
    cols = kdd.preprocessing.column_names()
    service_cols = [i for i, c in enumerate(cols) if c.startswith("service=")]
    assert enc.x[1, service_cols].sum() == 0.0
    with pytest.raises(RecordError, match="unknown category") as e:
        kdd.preprocessing.encode_records(recs, unknown_category="error")
    assert [(p.index, p.field) for p in e.value.problems] == [
        (1, "records[1].service"), (2, "records[2].is_host_login")]


def test_second_load_uses_cache(kdd):
    t0 = time.perf_counter()
    again = load_kdd(seed=42)
    assert time.perf_counter() - t0 < 10  # parse is cached; generous for shared CPUs
    np.testing.assert_array_equal(again.train[:1000], kdd.train[:1000])


def test_cap_anomalies():
    anomalies = np.arange(100, 200)
    assert cap_anomalies(anomalies, 400, 0.2, seed=0) is anomalies  # cap 100: all fit
    capped = cap_anomalies(anomalies, 200, 0.2, seed=0)
    assert len(capped) == 50  # int(200 * 0.2 / 0.8)
    assert set(capped) <= set(anomalies) and (np.diff(capped) > 0).all()
    assert len(capped) / (len(capped) + 200) == pytest.approx(0.2)
    assert not np.array_equal(capped, cap_anomalies(anomalies, 200, 0.2, seed=1))


def test_row_labels_follow_the_split(kdd, paper_split):
    train_labels, test_labels = row_labels(seed=42)
    train, test_normal, test_anom = paper_split
    assert len(train_labels) == len(kdd.train) and len(test_labels) == len(kdd.test_y)
    split = split_rows(_read_kdd(str(REAL)), 42)
    assert (train_labels == _read_kdd(str(REAL))["label"].to_numpy()[split.train]).all()
    assert "normal." not in set(train_labels)
    # Test rows: label-0 rows first (file order), then the label-1 rows.
    assert (test_labels[: len(test_normal)] == test_normal["label"].to_numpy()).all()
    assert ((test_labels == "normal.") == (kdd.test_y == 1)).all()
    assert set(test_labels[kdd.test_y == 0]) >= {"smurf.", "neptune.", "back."}


def test_nids_protocol():
    """Intrusion detection: train on `normal.` traffic, every attack is an anomaly."""
    if not REAL.is_file():
        pytest.skip(f"{KDD_FILE} not under MEG_DATA_DIR (set MEG_DATA_DIR=/work/shared/data)")
    ds = load_kdd(seed=42, protocol="nids")
    train_labels, test_labels = row_labels(seed=42, protocol="nids")
    assert ds.name == "nids" and ds.info["anomaly_class"] == "every attack"
    assert set(train_labels) == {"normal."} and len(train_labels) == len(ds.train)
    assert ((test_labels != "normal.") == (ds.test_y == 1)).all()
    # every attack row of the test half, uncapped; the normal half of the test half
    df = _read_kdd(str(REAL))
    split = split_rows(df, 42, "nids")
    test_half = np.setdiff1d(np.arange(len(df)), split.train_half)
    assert len(split.test_anomalies) == int((df["label"].to_numpy()[test_half] != "normal.").sum())
    assert ds.contamination == pytest.approx(ds.test_y.mean()) and ds.test_y.mean() > 0.7
    n_normal_train_half = int((df["label"].to_numpy()[split.train_half] == "normal.").sum())
    assert len(ds.train) + len(ds.val) + len(ds.select) == n_normal_train_half
    assert len(ds.val) == round(0.2 * n_normal_train_half)
    assert set(split.calibration).isdisjoint(split.test_normal)
    assert {"smurf.", "neptune.", "back.", "teardrop."} <= set(test_labels)
