"""KDD Cup 1999 (the 10% file) under two protocols.

``paper`` (recipe ``kddcup99``), the MEG paper's anomaly-detection protocol:

- Labels: ``normal.`` = 1 (the anomaly class, the minority after the split), every
  attack = 0. Unusual for intrusion detection: the model learns attack traffic and
  flags ordinary traffic. Kept to reproduce the paper.
- Split: pandas ``sample(frac=0.5, random_state=seed)`` (seed 42 in the paper) is the
  training half, the other rows the test half. Training uses the label-0 rows only.
- Test: every label-0 test row plus label-1 test rows up to 20% of the test set (a
  seeded random subset when there are more; with seed 42 all of them fit: ~247k rows,
  ~19.7% label 1). Test rows come label 0 first, then label 1.

``nids`` (recipe ``nids``), intrusion detection: ``normal.`` = 0 is the training class
and every attack = 1 is an anomaly. Same split of the file; training uses the normal
rows of the training half; test = the normal rows of the test half plus every attack
row of the test half (no cap: ~48.6k normal, ~198k attacks, every attack type kept).

Both: a share of the label-0 training rows (`CalibrationSplit`) is held out as the
calibration rows (`val`): never trained on, disjoint from the test half.

Features: 7 categorical columns one-hot encoded over vocabularies from the whole file
(strings via `category_key`, sorted), 34 numeric columns min-max scaled with the
training rows' min and max (constant columns map to 0): 121 model columns. The paper's
code fits a scaler but never uses its output; we do scale (REFERENCE.md).

The returned `Preprocessing` turns JSON records into exactly the model rows built
here, so the service scores raw connection records the way the model was trained.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from meg.bundle import DataSpec
from meg.preprocessing import Feature, Preprocessing
from training.data import CalibrationSplit, Dataset, hold_out
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
ANOMALY_LABEL = "normal."  # the paper protocol's anomaly class
NORMAL_LABEL = "normal."  # the nids protocol's training class
PROTOCOLS = ("paper", "nids")
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


@dataclass(frozen=True)
class KddSplit:
    """Row positions (into the file) of one protocol's split."""

    train_half: np.ndarray  # the sampled training half, every label
    train: np.ndarray  # label-0 rows of the training half that train
    calibration: np.ndarray  # label-0 rows of the training half held out to calibrate
    selection: np.ndarray  # label-0 rows of the training half held out to select a checkpoint
    test_normal: np.ndarray  # label-0 rows of the test half, file order
    test_anomalies: np.ndarray  # label-1 rows of the test half (paper: after the 20% cap)


def anomaly_mask(df: pd.DataFrame, protocol: str) -> np.ndarray:
    """Label 1 (the anomaly class) per row: ``normal.`` for the paper, attacks for nids."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"KDD protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    is_normal = (df["label"] == NORMAL_LABEL).to_numpy()
    return is_normal if protocol == "paper" else ~is_normal


def split_rows(df: pd.DataFrame, seed: int, protocol: str = "paper",
               calibration: CalibrationSplit = CalibrationSplit()) -> KddSplit:
    """Row positions of the protocol's split (module docstring)."""
    y = anomaly_mask(df, protocol)
    # Series.sample draws the same positions as the paper's df.sample (it depends only on
    # the length and the seed) without copying all 42 columns.
    train_half = df.index.to_series().sample(frac=0.5, random_state=seed).to_numpy()
    in_train = np.zeros(len(df), dtype=bool)
    in_train[train_half] = True
    held = hold_out(train_half[~y[train_half]], calibration, seed)
    test_normal = np.flatnonzero(~in_train & ~y)  # file order, as df.loc[~isin] gives
    test_anom = np.flatnonzero(~in_train & y)
    if protocol == "paper":
        test_anom = cap_anomalies(test_anom, len(test_normal), TEST_ANOMALY_SHARE, seed)
    return KddSplit(train_half, held.train, held.calibration, held.selection, test_normal,
                    test_anom)


def row_labels(seed: int = 42, protocol: str = "paper",
               calibration: CalibrationSplit = CalibrationSplit()) -> tuple[np.ndarray, np.ndarray]:
    """The file's own labels (``smurf.``, ``normal.``, ...) of `load_kdd(seed, protocol)`'s
    training rows and test rows, in the same order: for per-attack-type breakdowns."""
    df = _read_kdd(str(require_file(KDD_FILE)))
    split = split_rows(df, seed, protocol, calibration)
    labels = df["label"].to_numpy()
    return labels[split.train], labels[np.concatenate([split.test_normal, split.test_anomalies])]


def load_kdd(seed: int = 42, protocol: str = "paper",
             calibration: CalibrationSplit = CalibrationSplit(),
             unknown_category: str = "zeros") -> Dataset:
    """KDD Cup 99 (10%) as a Dataset by `protocol` ("paper" or "nids"; module
    docstring): 121 model columns, train = label-0 rows of the sampled half less the
    calibration rows (`val`), test = label-0 test-half rows then label-1 test-half rows.
    `unknown_category`: the bundle's policy for categories the file never held."""
    t0 = time.perf_counter()
    path = str(require_file(KDD_FILE))
    df = _read_kdd(path)
    codes = _category_codes(path)
    split = split_rows(df, seed, protocol, calibration)
    n_label1 = int(anomaly_mask(df, protocol).sum())

    features = []
    for name in FEATURES:
        if name in CATEGORICAL:
            features.append(Feature(name, "categorical", categories=list(codes[name][0])))
        else:
            offset, scale = _min_max(df[name].to_numpy(dtype=np.float64)[split.train])
            features.append(Feature(name, "numeric", offset=offset, scale=scale))
    pre = Preprocessing(features=features, unknown_category=unknown_category)

    train = encode_rows(df, split.train, pre, codes)
    val = encode_rows(df, split.calibration, pre, codes)
    test_x = np.concatenate([encode_rows(df, split.test_normal, pre, codes),
                             encode_rows(df, split.test_anomalies, pre, codes)])
    test_y = np.concatenate([np.zeros(len(split.test_normal), np.int64),
                             np.ones(len(split.test_anomalies), np.int64)])
    share = float(len(split.test_anomalies) / len(test_y))
    info = {
        "protocol": protocol,
        "anomaly_class": "normal." if protocol == "paper" else "every attack",
        "seed": seed,
        "rows": int(len(df)),
        "label1_rows": n_label1,
        "label0_rows": int(len(df) - n_label1),
        "train_half_rows": int(len(split.train_half)),
        "train_rows": int(len(split.train)),
        "calibration_rows": int(len(split.calibration)),
        "selection_rows": int(len(split.selection)),
        "test_rows": int(len(test_y)),
        "test_anomalies": int(len(split.test_anomalies)),
        "test_anomaly_share": share,
        "scaled": "min-max fitted on training rows (the paper's published figures are unscaled)",
        "load_seconds": round(time.perf_counter() - t0, 3),
    }
    return Dataset(
        name="kdd" if protocol == "paper" else "nids",
        train=train,
        val=val,
        test_x=test_x,
        test_y=test_y,
        spec=DataSpec(kind="tabular", shape=[pre.output_dim], feature_names=pre.column_names()),
        preprocessing=pre,
        contamination=CONTAMINATION if protocol == "paper" else share,
        info=info,
        select=encode_rows(df, split.selection, pre, codes),
    )


def kdd_records(rows: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Raw KDD rows (positional indices into the file; all when None) as JSON-style
    records (feature name -> Python value), as a client would send them to the service."""
    df = _read_kdd(str(require_file(KDD_FILE)))
    sub = df if rows is None else df.iloc[np.asarray(rows)]
    return sub[list(FEATURES)].to_dict(orient="records")
