"""Generic CSV / Parquet tables: schema, preprocessing and the label protocol."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from meg.preprocessing import RecordError
from training.data.files import DataError
from training.data.tabular import load_tabular

N = 200


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    kind = np.where(np.arange(N) % 5 == 0, "bad", "ok")  # 40 anomalies, 160 normal
    return pd.DataFrame(
        {
            "row": np.arange(N, dtype=np.float64),  # unique: lets tests recover rows
            "size": rng.integers(0, 50, N),
            "colour": rng.choice(["red", "green", "blue"], N),
            "flag": rng.random(N) < 0.5,
            "const": np.full(N, 3.0),
            "kind": kind,
        }
    )


@pytest.fixture
def table(tmp_path):
    df = _frame()
    csv, pq = tmp_path / "t.csv", tmp_path / "t.parquet"
    df.to_csv(csv, index=False)
    df.to_parquet(pq, index=False)
    return df, csv, pq


def _rows_of(ds, values: np.ndarray) -> np.ndarray:
    """Recover the original row numbers from the scaled `row` column."""
    f = ds.preprocessing.features[0]
    assert f.name == "row"
    col = ds.spec.feature_names.index("row")
    return np.rint(values[:, col] / f.scale + f.offset).astype(int)


def _records(df: pd.DataFrame, rows, columns) -> list[dict]:
    return json.loads(json.dumps(df.iloc[rows][columns].to_dict(orient="records")))


@pytest.mark.parametrize("which", ["csv", "parquet"])
def test_inferred_schema(table, which):
    df, csv, pq = table
    ds = load_tabular(csv if which == "csv" else pq, label="kind")
    kinds = {f.name: f.kind for f in ds.preprocessing.features}
    assert kinds == {
        "row": "numeric",
        "size": "numeric",
        "colour": "categorical",
        "flag": "categorical",
        "const": "numeric",
    }
    cats = {f.name: f.categories for f in ds.preprocessing.features if f.kind == "categorical"}
    assert cats == {"colour": ["blue", "green", "red"], "flag": ["0", "1"]}
    assert ds.spec.kind == "tabular" and ds.spec.shape == [1 + 1 + 3 + 2 + 1]
    assert ds.spec.feature_names == ds.preprocessing.column_names()
    assert ds.train.dtype == np.float32
    # min-max on training rows; the constant column maps to 0
    num = [ds.spec.feature_names.index(c) for c in ("row", "size")]
    assert ds.train[:, num].min() == 0.0 and ds.train[:, num].max() == 1.0
    assert (ds.train[:, ds.spec.feature_names.index("const")] == 0).all()
    assert ds.info["schema"] == kinds


def test_csv_and_parquet_agree(table):
    _, csv, pq = table
    a, b = load_tabular(csv, label="kind"), load_tabular(pq, label="kind")
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    assert a.preprocessing.to_json() == b.preprocessing.to_json()


def test_label_protocol(table):
    df, csv, _ = table
    ds = load_tabular(csv, label="kind", seed=3)
    labels = df["kind"].to_numpy()
    train_rows, val_rows = _rows_of(ds, ds.train), _rows_of(ds, ds.val)
    assert (labels[train_rows] == "ok").all() and (labels[val_rows] == "ok").all()
    # 80/20 of the 160 normal rows into fitting and test-normal rows, then 20% of the
    # 128 fitting rows held out to calibrate and 10% to select a checkpoint
    select_rows = _rows_of(ds, ds.select)
    assert len(train_rows) == 89 and len(val_rows) == 26 and len(select_rows) == 13
    test_rows = _rows_of(ds, ds.test_x)
    parts = [set(train_rows), set(val_rows), set(select_rows), set(test_rows)]
    assert sum(map(len, parts)) == len(set().union(*parts))
    np.testing.assert_array_equal(ds.test_y, (labels[test_rows] == "bad").astype(int))
    assert set(test_rows[ds.test_y == 1]) == set(np.flatnonzero(labels == "bad"))
    assert (ds.test_y[:32] == 0).all()
    assert ds.contamination == pytest.approx(40 / 72)  # the benchmark rule's test share
    assert ds.info["normal_values"] == ["ok"] and ds.info["anomalies"] == 40
    # explicit normal values flip the roles
    flipped = load_tabular(csv, label="kind", normal_values=["bad"])
    assert (labels[_rows_of(flipped, flipped.train)] == "bad").all()
    assert flipped.contamination == pytest.approx(160 / 168)


def test_numeric_labels_match_by_category_key(tmp_path):
    df = _frame()
    df["kind"] = np.where(df["kind"] == "ok", 0, 1)
    path = tmp_path / "n.csv"
    df.to_csv(path, index=False)
    ds = load_tabular(path, label="kind", normal_values=[0.0])  # 0.0 and 0 are one value
    assert int(ds.test_y.sum()) == 40


def test_declared_schema_and_drop(table):
    df, csv, _ = table
    ds = load_tabular(csv, label="kind", categorical=["size"], numeric=["row"], drop=["const"])
    kinds = {f.name: f.kind for f in ds.preprocessing.features}
    assert kinds == {
        "row": "numeric",
        "size": "categorical",
        "colour": "categorical",
        "flag": "categorical",
    }
    size = ds.preprocessing.features[1]
    assert size.categories == sorted(str(v) for v in df["size"].unique())


def test_transform_records_matches_model_rows(table):
    df, _, pq = table
    ds = load_tabular(pq, label="kind", categorical=["size"])
    feats = [f.name for f in ds.preprocessing.features]
    for values in (ds.train, ds.test_x):
        rows = _rows_of(ds, values)
        recs = _records(df, rows, feats)
        np.testing.assert_array_equal(ds.preprocessing.transform_records(recs), values)


def test_unknown_category_scored_by_default_or_an_error(table):
    df, csv, _ = table
    ds = load_tabular(csv, label="kind")
    assert ds.preprocessing.unknown_category == "zeros"
    rec = _records(df, [0], [f.name for f in ds.preprocessing.features])[0]
    rec["colour"] = "purple"
    enc = ds.preprocessing.encode_records([rec])
    assert enc.unseen == [["colour"]]
    colour = [i for i, c in enumerate(ds.spec.feature_names) if c.startswith("colour=")]
    assert enc.x[0, colour].sum() == 0.0
    with pytest.raises(RecordError, match="unknown category 'purple'"):
        ds.preprocessing.encode_records([rec], unknown_category="error")
    strict = load_tabular(csv, label="kind", unknown_category="error")
    with pytest.raises(RecordError, match="unknown category 'purple'"):
        strict.preprocessing.transform_records([rec])


def test_without_label(table):
    _, csv, _ = table
    ds = load_tabular(csv, test_fraction=0.25)
    assert ds.test_x is None and ds.test_y is None
    # calibration: a 20% split of the file; checkpoint selection: another 10%
    assert len(ds.train) == 140 and len(ds.val) == 40 and len(ds.select) == 20
    assert not set(_rows_of(ds, ds.train)) & set(_rows_of(ds, ds.val))
    assert ds.contamination == 0.05
    assert "kind=ok" in ds.spec.feature_names  # unlabelled: every column is a feature


def test_errors(table, tmp_path):
    df, csv, _ = table
    bad = tmp_path / "t.xlsx"
    bad.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_tabular(bad)
    with pytest.raises(DataError, match="no such file"):
        load_tabular(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="'nope'"):
        load_tabular(csv, label="nope")
    with pytest.raises(DataError, match="both categorical and numeric"):
        load_tabular(csv, categorical=["size"], numeric=["size"])
    with pytest.raises(DataError, match="declared numeric"):
        load_tabular(csv, numeric=["colour"])
    with pytest.raises(ValueError, match="test_fraction"):
        load_tabular(csv, test_fraction=1.0)
    holes = df.copy()
    holes.loc[[3, 7], "size"] = np.nan
    path = tmp_path / "holes.csv"
    holes.to_csv(path, index=False)
    with pytest.raises(DataError, match="'size' has 2 missing"):
        load_tabular(path, label="kind")
    assert load_tabular(path, label="kind", drop=["size"]).dim == 7
