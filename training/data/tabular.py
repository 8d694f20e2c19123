"""Any CSV or Parquet table as a Dataset, with its schema saved as a `Preprocessing`.

Schema: columns named in `categorical` / `numeric` take that kind; every other column
(except the label and those in `drop`) is inferred: bool and non-numeric columns are
categorical, numeric columns numeric. Categorical vocabularies (strings via
`category_key`, sorted) come from the whole file, so test rows never hold an unknown
category; numeric columns are min-max scaled with the training rows' min and max
(constant columns map to 0).

Missing values: a missing value (NaN, empty cell, None) in a feature or label column is
an error naming the column and how many rows are affected. We do not drop or impute
silently: the service rejects such records too, so clean the file or `drop` the column.

With `label`: rows whose label is in `normal_values` (default: the most frequent label)
are normal. Normal rows are split (1 - test_fraction) / test_fraction into train and
test-normal; test = test-normal + every anomalous row (label 1), normal rows first.
Without a label there is no test set. Either way a share of the training rows
(`CalibrationSplit`, default 20%) is held out as `val`, the calibration rows: never
trained on, disjoint from the test rows.

Categories a record sends that the file never held: `unknown_category` "zeros" (the
default) scores them with an all-zero one-hot block; "error" rejects them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from meg.bundle import DataSpec
from meg.preprocessing import Feature, Preprocessing, category_key
from training.data import CalibrationSplit, Dataset, hold_out
from training.data.files import DataError

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet (``.parquet``, ``.pq``)
    file by its suffix; DataError for anything else or an unreadable file."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if name.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(path)
        if name.endswith(CSV_SUFFIXES):
            return pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read table ({type(e).__name__}: {e})") from e
    raise DataError(
        f"{path}: unsupported file type; use one of {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
    )


def _check_columns(df: pd.DataFrame, path: Path, what: str, names: list[str]) -> None:
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: {what} column(s) {missing} not in the file (columns: {list(df.columns)})"
        )


def _check_missing(df: pd.DataFrame, path: Path, col: str) -> None:
    n = int(df[col].isna().sum())
    if n:
        raise DataError(
            f"{path}: column {col!r} has {n} missing value(s); clean the file or drop the column"
        )


def category_codes(series: pd.Series) -> tuple[list[str], np.ndarray]:
    """Sorted `category_key` vocabulary of `series` and each row's index into it
    (values such as 1, 1.0 and "1" share one category, as in the service)."""
    codes, uniques = pd.factorize(series, sort=False)
    # .tolist() gives Python scalars, so numpy bools/ints get the keys JSON values get.
    keys = [category_key(u) for u in list(uniques.tolist())]
    vocab = sorted(set(keys))
    remap = np.array([vocab.index(k) for k in keys], dtype=np.int64)
    return vocab, remap[codes]


def _numeric(series: pd.Series, path: Path) -> np.ndarray:
    try:
        return series.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: column {series.name!r} is declared numeric but {e}") from e


def load_tabular(
    path: str | Path,
    label: str | None = None,
    normal_values: list | None = None,
    categorical: list[str] | None = None,
    numeric: list[str] | None = None,
    drop: list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    calibration: CalibrationSplit = CalibrationSplit(),
    unknown_category: str = "zeros",
) -> Dataset:
    """Load a CSV/Parquet table as a tabular Dataset (schema, split and missing-value
    policy in the module docstring). The Dataset's `contamination` (the benchmark rule's
    top share of test scores) is the test set's anomaly share. Raises DataError for
    unreadable files, unknown columns, missing values, non-numeric values in numeric
    columns or empty splits."""
    path = Path(path)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    df = read_table(path)
    categorical, numeric, drop = list(categorical or []), list(numeric or []), list(drop or [])
    _check_columns(df, path, "categorical", categorical)
    _check_columns(df, path, "numeric", numeric)
    _check_columns(df, path, "drop", drop)
    if label is not None:
        _check_columns(df, path, "label", [label])
    both = sorted(set(categorical) & set(numeric))
    if both:
        raise DataError(f"{path}: column(s) {both} declared both categorical and numeric")
    clash = sorted(({*drop} | ({label} if label else set())) & (set(categorical) | set(numeric)))
    if clash:
        raise DataError(f"{path}: column(s) {clash} are the label or dropped but declared features")

    skip = {*drop, label}
    columns = [c for c in df.columns if c not in skip]
    if not columns:
        raise DataError(f"{path}: no feature columns left")
    kinds: dict[str, str] = {}
    for col in columns:
        if col in categorical or col in numeric:
            kinds[col] = "categorical" if col in categorical else "numeric"
        else:
            inferred_numeric = is_numeric_dtype(df[col]) and not is_bool_dtype(df[col])
            kinds[col] = "numeric" if inferred_numeric else "categorical"
    for col in [*columns, *([label] if label else [])]:
        _check_missing(df, path, col)

    # Split row positions.
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"path": str(path), "rows": int(len(df)), "seed": seed}
    if label is not None:
        label_keys = np.array([category_key(v) for v in df[label].tolist()], dtype=object)
        if normal_values is None:
            keys, counts = np.unique(label_keys, return_counts=True)
            normal_keys = {str(keys[int(np.argmax(counts))])}  # ties: smallest key
        else:
            normal_keys = {category_key(v) for v in normal_values}
        is_anomaly = ~np.isin(label_keys, list(normal_keys))
        normal_idx = np.flatnonzero(~is_anomaly)
        normal_idx = normal_idx[rng.permutation(len(normal_idx))]
        n_train = int(round((1.0 - test_fraction) * len(normal_idx)))
        fit_rows, test_rows = normal_idx[:n_train], normal_idx[n_train:]
        anomaly_rows = np.flatnonzero(is_anomaly)
        info.update(label=label, normal_values=sorted(normal_keys), anomalies=len(anomaly_rows))
    else:
        fit_rows, test_rows, anomaly_rows = rng.permutation(len(df)), None, None
    if len(fit_rows) < 2 or (test_rows is not None and len(test_rows) == 0):
        raise DataError(
            f"{path}: split left {len(fit_rows)} training and "
            f"{0 if test_rows is None else len(test_rows)} test normal rows; need at least "
            f"2 training rows (some are held out to calibrate) and one test row"
        )
    train_rows, val_rows, select_rows = hold_out(fit_rows, calibration, seed)

    # Fit the preprocessing: vocabularies on all rows, min-max on training rows.
    features: list[Feature] = []
    blocks: list[np.ndarray] = []  # per feature: full-file numeric values or category codes
    for col in columns:
        if kinds[col] == "categorical":
            vocab, codes = category_codes(df[col])
            features.append(Feature(col, "categorical", categories=vocab))
            blocks.append(codes)
        else:
            values = _numeric(df[col], path)
            if not np.isfinite(values).all():
                raise DataError(f"{path}: column {col!r} has non-finite values (inf)")
            lo, hi = float(values[train_rows].min()), float(values[train_rows].max())
            features.append(
                Feature(col, "numeric", offset=lo, scale=1.0 / (hi - lo) if hi > lo else 0.0)
            )
            blocks.append(values)
    if unknown_category not in ("zeros", "error"):
        raise DataError(f"unknown_category must be 'zeros' or 'error', got {unknown_category!r}")
    pre = Preprocessing(features=features, unknown_category=unknown_category)

    def encode(rows: np.ndarray) -> np.ndarray:
        return pre.encode_columns({f.name: b[rows] for f, b in zip(features, blocks, strict=True)})

    train, val = encode(train_rows), encode(val_rows)
    test_x = test_y = None
    contamination = 0.05  # unused without a test set
    if anomaly_rows is not None and test_rows is not None:
        test_x = np.concatenate([encode(test_rows), encode(anomaly_rows)])
        test_y = np.concatenate(
            [np.zeros(len(test_rows), np.int64), np.ones(len(anomaly_rows), np.int64)]
        )
        share = float(test_y.mean())
        contamination = share if 0.0 < share < 1.0 else contamination
    info.update(
        train=int(len(train)),
        val=int(len(val)),
        select=int(len(select_rows)),
        test=0 if test_y is None else int(len(test_y)),
        schema={c: kinds[c] for c in columns},
    )
    return Dataset(
        name=path.name.split(".")[0],
        train=train,
        val=val,
        test_x=test_x,
        test_y=test_y,
        spec=DataSpec(kind="tabular", shape=[pre.output_dim], feature_names=pre.column_names()),
        preprocessing=pre,
        contamination=float(contamination),
        info=info,
        select=encode(select_rows),
    )
