"""PyOD baselines shared by the anomaly-detection benchmarks (bench/kdd.py, bench/mnist.py).

Every detector is fitted on a Dataset's training rows (normal data only, exactly the rows
MEG trains on) and scores its test rows; higher score = more anomalous (PyOD's
`decision_function`). Metrics come from `training.evaluate.anomaly_metrics`, the function
MEG's own evaluation uses, so every method's threshold is computed the same way (flag the
top `contamination` share of test scores).

PyOD defaults unless stated here:
- ocsvm: fitted on `OCSVM_ROWS` (5,000) random training rows (REFERENCE.md's peers did
  the same; a full fit is quadratic in the rows).
- autoencoder: `epoch_num` and `batch_size` set by the caller (PyOD defaults are 10
  epochs of batch 32: too long for a CPU on KDD's 198k rows); every other argument a
  PyOD default.
- deepsvdd: `epochs` set by the caller, likewise.
- knn: PyOD's defaults throughout (5 neighbours, distance to the 5th as the score,
  scikit-learn's automatic index); exact, so slow on large tables.

    pip install pyod    # (the `bench` extra)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.evaluate import anomaly_metrics

OCSVM_ROWS = 5000
# Random: results depend on the seed (ECOD is deterministic given the data).
RANDOM = {"iforest", "ocsvm", "autoencoder", "deepsvdd"}
LABELS = {
    "iforest": "IForest (PyOD)",
    "ecod": "ECOD (PyOD)",
    "ocsvm": f"OCSVM (PyOD, {OCSVM_ROWS:,} train rows)",
    "autoencoder": "AutoEncoder (PyOD)",
    "deepsvdd": "DeepSVDD (PyOD)",
    "knn": "KNN (PyOD)",
}


@dataclass
class BaselineResult:
    method: str
    seed: int
    metrics: dict[str, float]
    fit_seconds: float
    score_seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    scores: np.ndarray | None = field(default=None, repr=False)  # test scores; not saved
    # scores of `calibration_x` rows when given (held-out normal rows); not saved
    calibration_scores: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "metrics": self.metrics,
                "fit_seconds": round(self.fit_seconds, 2),
                "score_seconds": round(self.score_seconds, 2),
                "wall_seconds": round(self.fit_seconds + self.score_seconds, 2),
                "params": self.params}


def make_detector(name: str, seed: int, n_features: int, epochs: int = 2,
                  batch_size: int = 256) -> tuple[Any, dict[str, Any]]:
    """A PyOD detector and the non-default arguments it was built with."""
    if name == "iforest":
        from pyod.models.iforest import IForest

        params: dict[str, Any] = {"random_state": seed}
        return IForest(**params), params
    if name == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD(), {}
    if name == "knn":
        from pyod.models.knn import KNN

        return KNN(), {}
    if name == "ocsvm":
        from pyod.models.ocsvm import OCSVM

        return OCSVM(), {"train_rows": OCSVM_ROWS, "subset_seed": seed}
    if name == "autoencoder":
        from pyod.models.auto_encoder import AutoEncoder

        params = {"epoch_num": epochs, "batch_size": batch_size, "random_state": seed,
                  "verbose": 0}
        return AutoEncoder(**params), params
    if name == "deepsvdd":
        from pyod.models.deep_svdd import DeepSVDD

        params = {"epochs": epochs, "batch_size": batch_size, "random_state": seed,
                  "verbose": 0}
        return DeepSVDD(n_features=n_features, **params), params
    raise ValueError(f"unknown baseline {name!r} (known: {', '.join(LABELS)})")


def run_baseline(name: str, train: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 contamination: float, seed: int = 0, epochs: int = 2,
                 batch_size: int = 256,
                 calibration_x: np.ndarray | None = None) -> BaselineResult:
    """Fit `name` on `train` (normal rows), score `test_x`, and compute the metrics with
    `anomaly_metrics` (top `contamination` share of test scores flagged). With
    `calibration_x` (held-out normal rows), also score those (for conformal p-values)."""
    import torch

    torch.manual_seed(seed)  # PyOD's deep models also seed themselves via random_state
    det, params = make_detector(name, seed, train.shape[1], epochs=epochs, batch_size=batch_size)
    fit_rows = train
    if name == "ocsvm" and len(train) > OCSVM_ROWS:
        pick = np.random.default_rng(seed).choice(len(train), OCSVM_ROWS, replace=False)
        fit_rows = train[np.sort(pick)]
    t0 = time.perf_counter()
    det.fit(fit_rows)
    t1 = time.perf_counter()
    scores = np.asarray(det.decision_function(test_x), dtype=np.float64)
    t2 = time.perf_counter()
    if not np.isfinite(scores).all():  # keep the metric well defined; say so
        params["nonfinite_scores"] = int((~np.isfinite(scores)).sum())
        scores = np.nan_to_num(scores, nan=0.0, posinf=np.finfo(np.float64).max)
    metrics = anomaly_metrics(scores, test_y, contamination)
    cal = None
    if calibration_x is not None:
        cal = np.asarray(det.decision_function(calibration_x), dtype=np.float64)
        cal = np.nan_to_num(cal, nan=0.0, posinf=np.finfo(np.float64).max)
    return BaselineResult(name, seed, metrics, t1 - t0, t2 - t1, params, scores, cal)


def summarize(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
