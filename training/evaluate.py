"""Built-in evaluation: what `meg eval` and the end of training report.

- 2-D toys: modes covered, share of high-quality samples, KL of mode frequencies.
- Labelled data (digits, mnist, kddcup99, nids, tabular with a label): AUROC and AUPRC of
  the energy as anomaly score, and two kinds of precision / recall / F1:
  - the benchmark protocol's (`precision`, `recall`, `f1`): flag the top
    `contamination` share of *test* energies (for kddcup99 the paper's top-20% rule);
  - the calibrated flags the service raises (`fpr@α`, `precision@α`, `recall@α`,
    `f1@α` for α in ALPHAS and the bundle's target): conformal p-values against the
    calibration rows' energies, flag p <= α. `fpr@α` is the realized false-positive rate
    on the test set's normal rows, which the calibration never saw.
Flags come from meg.scoring, the functions the service calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from meg.scoring import conformal_pvalues, flag, flag_by_pvalue, threshold_from_scores
from training.data import Dataset
from training.data.toys import toy_metrics

ArrayFn = Callable[[np.ndarray], np.ndarray]
ALPHAS = (0.01, 0.05)  # target false-positive rates always reported


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, device: torch.device,
            batch_size: int = 8192) -> np.ndarray:
    """Apply a torch function to numpy rows in batches; returns numpy."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i : i + batch_size], dtype=torch.float32, device=device)
        out.append(fn(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


def flag_metrics(labels: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and false-positive rate of boolean `flags` against `labels`
    (1 = anomaly)."""
    labels = np.asarray(labels).astype(int)
    pred = np.asarray(flags).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, pred, average="binary", zero_division=0
    )
    normal = labels == 0
    fpr = float(pred[normal].mean()) if normal.any() else float("nan")
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "fpr": fpr}


def calibrated_metrics(scores: np.ndarray, labels: np.ndarray, calibration_scores: np.ndarray,
                       alphas: Iterable[float] = ALPHAS) -> dict[str, float]:
    """`fpr@α`, `precision@α`, `recall@α`, `f1@α` of the service's rule: flag conformal
    p-value <= α against `calibration_scores` (held-out normal scores, disjoint from the
    test rows)."""
    p = conformal_pvalues(calibration_scores, scores)
    out: dict[str, float] = {"n_calibration": int(np.size(calibration_scores))}
    for alpha in sorted(set(alphas)):
        for k, v in flag_metrics(labels, flag_by_pvalue(p, alpha)).items():
            out[f"{k}@{alpha:g}"] = v
    return out


def anomaly_metrics(scores: np.ndarray, labels: np.ndarray, contamination: float,
                    calibration_scores: np.ndarray | None = None,
                    alphas: Iterable[float] = ALPHAS) -> dict[str, float]:
    """Metrics of anomaly scores (higher = more anomalous) against labels (1 = anomaly):
    AUROC, AUPRC, the protocol's top-`contamination` precision / recall / F1 and, given
    `calibration_scores`, the calibrated flags' metrics at each α in `alphas`."""
    labels = np.asarray(labels).astype(int)
    top = flag_metrics(labels, flag(scores, threshold_from_scores(scores, contamination)))
    out = {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "precision": top["precision"],
        "recall": top["recall"],
        "f1": top["f1"],
        "contamination": float(contamination),
        "n_test": int(len(labels)),
    }
    if calibration_scores is not None:
        out.update(calibrated_metrics(scores, labels, calibration_scores, alphas))
    return out


def evaluate(
    dataset: Dataset,
    energy_fn: ArrayFn,
    sample_fn: Callable[[int], np.ndarray],
    n_samples: int = 2500,
    calibration_scores: np.ndarray | None = None,
    target_fpr: float | None = None,
) -> dict[str, float]:
    """Evaluate a model given numpy functions for its energy and its sampler. The
    calibrated flags use `calibration_scores` (default: the energies of the dataset's
    calibration rows) at ALPHAS and `target_fpr`."""
    metrics: dict[str, float] = {}
    if dataset.spec.kind == "points":
        metrics.update(toy_metrics(dataset.name, sample_fn(n_samples)))
    val_e = energy_fn(dataset.val)
    cal = val_e if calibration_scores is None else np.asarray(calibration_scores)
    if dataset.test_x is not None and dataset.test_y is not None:
        alphas = [*ALPHAS, *([target_fpr] if target_fpr is not None else [])]
        metrics.update(anomaly_metrics(energy_fn(dataset.test_x), dataset.test_y,
                                       dataset.contamination, cal, alphas))
    metrics["energy_val_mean"] = float(np.mean(val_e))
    return metrics
