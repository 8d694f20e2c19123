"""KDD Cup 1999 (the 10% file) with the MEG paper's anomaly-detection protocol.

- Labels: ``normal.`` = 1 (the anomaly class, the minority after the split), every
  attack = 0.
- Split: pandas ``sample(frac=0.5, random_state=seed)`` (seed 42 in the paper) is the
  training half, the other rows the test half. Training uses the label-0 rows only.
- Test: every label-0 test row plus label-1 test rows up to 20% of the test set (a
  seeded random subset when there are more; with seed 42 all of them fit: ~247k rows,
  ~19.7% label 1). Test rows come label 0 first, then label 1.
- Features: 7 categorical columns one-hot encoded over vocabularies from the whole file
  (strings via `category_key`, sorted), 34 numeric columns min-max scaled with the
  training rows' min and max (constant columns map to 0): 121 model columns. The
  paper's code fits a scaler but never uses its output; we do scale (REFERENCE.md).

The returned `Preprocessing` turns JSON records into exactly the model rows built
here, so the service scores raw connection records the way the model was trained.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import pandas as pd

from meg.bundle import DataSpec
from meg.preprocessing import Feature, Preprocessing
from training.data import Dataset
from training.data.files import require_file
from training.data.tabular import category_codes

KDD_FILE = "kddcup99/kddcup.data_10_percent.gz"
KDD_COLUMNS = (
    "duration",
    "protocol_type",
    "service",
    "flag",
    "src_bytes",
    "dst_bytes",
    "land",
    "wrong_fragment",
    "urgent",
    "hot",
    "num_failed_logins",
    "logged_in",
    "num_compromised",
    "root_shell",
    "su_attempted",
    "num_root",
    "num_file_creations",
    "num_shells",
    "num_access_files",
    "num_outbound_cmds",
    "is_host_login",
    "is_guest_login",
    "count",
    "srv_count",
    "serror_rate",
    "srv_serror_rate",
    "rerror_rate",
    "srv_rerror_rate",
    "same_srv_rate",
    "diff_srv_rate",
    "srv_diff_host_rate",
    "dst_host_count",
    "dst_host_srv_count",
    "dst_host_same_srv_rate",
    "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate",
    "dst_host_srv_diff_host_rate",
    "dst_host_serror_rate",
    "dst_host_srv_serror_rate",
    "dst_host_rerror_rate",
    "dst_host_srv_rerror_rate",
    "label",
)
FEATURES = tuple(KDD_COLUMNS[:-1])
CATEGORICAL = (
    "protocol_type",
    "service",
    "flag",
    "land",
    "logged_in",
    "is_host_login",
    "is_guest_login",
)
ANOMALY_LABEL = "normal."
TEST_ANOMALY_SHARE = 0.2
CONTAMINATION = 0.2

assert len(KDD_COLUMNS) == 42


@functools.lru_cache(maxsize=2)
def _read_kdd(path: str) -> pd.DataFrame:
    """The parsed file, cached per process (tests and benches load it repeatedly).
    Callers must not modify it."""
    return pd.read_csv(path, header=None, names=list(KDD_COLUMNS))


@functools.lru_cache(maxsize=2)
def _category_codes(path: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per categorical column: the sorted vocabulary (category_key strings) over the
    whole file and every row's index into it."""
    df = _read_kdd(path)
    return {col: category_codes(df[col]) for col in CATEGORICAL}


def encode_rows(
    df: pd.DataFrame, rows: np.ndarray, pre: Preprocessing, codes: dict[str, Any]
) -> np.ndarray:
    """Model rows (len(rows), output_dim) float32 for positional `rows` of `df`, through
    the bundle's own `Preprocessing.encode_columns`."""
    return pre.encode_columns({
        f.name: (df[f.name].to_numpy(dtype=np.float64)[rows] if f.kind == "numeric"
                 else codes[f.name][1][rows])
        for f in pre.features})


def _min_max(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    return lo, (1.0 / (hi - lo) if hi > lo else 0.0)


def cap_anomalies(anomalies: np.ndarray, n_normal: int, share: float, seed: int) -> np.ndarray:
    """At most enough of `anomalies` (row positions) to make up `share` of a test set
    with `n_normal` normal rows: int(n_normal * share / (1 - share)), as the paper's
    code computes it. All of them when they fit; else a seeded random subset, kept in
    file order."""
    cap = int(n_normal * share / (1.0 - share))
    if len(anomalies) <= cap:
        return anomalies
    keep = np.random.RandomState(seed).permutation(len(anomalies))[:cap]
    return anomalies[np.sort(keep)]


def split_rows(df: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row positions of the protocol's split: (training half, its label-0 training rows,
    label-0 test rows, label-1 test rows after the 20% cap)."""
    y = (df["label"] == ANOMALY_LABEL).to_numpy()
    # Series.sample draws the same positions as the paper's df.sample (it depends only on
    # the length and the seed) without copying all 42 columns.
    train_half = df.index.to_series().sample(frac=0.5, random_state=seed).to_numpy()
    in_train = np.zeros(len(df), dtype=bool)
    in_train[train_half] = True
    train_rows = train_half[~y[train_half]]
    test_normal = np.flatnonzero(~in_train & ~y)  # file order, as df.loc[~isin] gives
    test_anom = np.flatnonzero(~in_train & y)
    test_anom = cap_anomalies(test_anom, len(test_normal), TEST_ANOMALY_SHARE, seed)
    return train_half, train_rows, test_normal, test_anom


def row_labels(seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """The file's own labels (``smurf.``, ``normal.``, ...) of `load_kdd(seed)`'s training
    rows and test rows, in the same order: for per-attack-type breakdowns."""
    df = _read_kdd(str(require_file(KDD_FILE)))
    _, train_rows, test_normal, test_anom = split_rows(df, seed)
    labels = df["label"].to_numpy()
    return labels[train_rows], labels[np.concatenate([test_normal, test_anom])]


def load_kdd(seed: int = 42) -> Dataset:
    """KDD Cup 99 (10%) as a Dataset by the paper's protocol (module docstring):
    121 model columns, train = label-0 rows of the sampled half, val = the label-0
    test rows, test = those plus label-1 test rows up to 20% of the test set."""
    t0 = time.perf_counter()
    path = str(require_file(KDD_FILE))
    df = _read_kdd(path)
    codes = _category_codes(path)
    train_half, train_rows, test_normal, test_anom = split_rows(df, seed)
    n_label1 = (df["label"] == ANOMALY_LABEL).sum()

    features = []
    for name in FEATURES:
        if name in CATEGORICAL:
            features.append(Feature(name, "categorical", categories=list(codes[name][0])))
        else:
            offset, scale = _min_max(df[name].to_numpy(dtype=np.float64)[train_rows])
            features.append(Feature(name, "numeric", offset=offset, scale=scale))
    pre = Preprocessing(features=features, unknown_category="error")

    train = encode_rows(df, train_rows, pre, codes)
    val = encode_rows(df, test_normal, pre, codes)
    test_x = np.concatenate([val, encode_rows(df, test_anom, pre, codes)])
    test_y = np.concatenate(
        [np.zeros(len(test_normal), np.int64), np.ones(len(test_anom), np.int64)]
    )
    info = {
        "seed": seed,
        "rows": int(len(df)),
        "label1_rows": int(n_label1),
        "label0_rows": int(len(df) - n_label1),
        "train_half_rows": int(len(train_half)),
        "train_rows": int(len(train_rows)),
        "test_rows": int(len(test_y)),
        "test_anomalies": int(len(test_anom)),
        "test_anomaly_share": float(len(test_anom) / len(test_y)),
        "scaled": "min-max fitted on training rows (the paper's published figures are unscaled)",
        "load_seconds": round(time.perf_counter() - t0, 3),
    }
    return Dataset(
        name="kdd",
        train=train,
        val=val,
        test_x=test_x,
        test_y=test_y,
        spec=DataSpec(kind="tabular", shape=[pre.output_dim], feature_names=pre.column_names()),
        preprocessing=pre,
        contamination=CONTAMINATION,
        info=info,
    )


def kdd_records(rows: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Raw KDD rows (positional indices into the file; all when None) as JSON-style
    records (feature name -> Python value), as a client would send them to the service."""
    df = _read_kdd(str(require_file(KDD_FILE)))
    sub = df if rows is None else df.iloc[np.asarray(rows)]
    return sub[list(FEATURES)].to_dict(orient="records")
