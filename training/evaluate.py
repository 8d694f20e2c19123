"""Built-in evaluation: what `meg eval` and the end of training report.

- 2-D toys: modes covered, share of high-quality samples, KL of mode frequencies.
- Labelled data (digits, mnist, kddcup99, tabular with a label): AUROC and AUPRC of the
  energy as anomaly score, plus precision / recall / F1 when the top `contamination`
  share of test energies is flagged (for kddcup99 that is the paper's top-20% rule).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from meg.scoring import flag, threshold_from_scores
from training.data import Dataset
from training.data.toys import toy_metrics

ArrayFn = Callable[[np.ndarray], np.ndarray]


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, device: torch.device,
            batch_size: int = 8192) -> np.ndarray:
    """Apply a torch function to numpy rows in batches; returns numpy."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i : i + batch_size], dtype=torch.float32, device=device)
        out.append(fn(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


def anomaly_metrics(scores: np.ndarray, labels: np.ndarray, contamination: float) -> dict[str, float]:
    """Metrics of anomaly scores (higher = more anomalous) against labels (1 = anomaly)."""
    labels = np.asarray(labels).astype(int)
    pred = flag(scores, threshold_from_scores(scores, contamination)).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, pred, average="binary", zero_division=0
    )
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "contamination": float(contamination),
        "n_test": int(len(labels)),
    }


def evaluate(
    dataset: Dataset,
    energy_fn: ArrayFn,
    sample_fn: Callable[[int], np.ndarray],
    n_samples: int = 2500,
) -> dict[str, float]:
    """Evaluate a model given numpy functions for its energy and its sampler."""
    metrics: dict[str, float] = {}
    if dataset.spec.kind == "points":
        metrics.update(toy_metrics(dataset.name, sample_fn(n_samples)))
    if dataset.test_x is not None and dataset.test_y is not None:
        metrics.update(anomaly_metrics(energy_fn(dataset.test_x), dataset.test_y, dataset.contamination))
    val_e = energy_fn(dataset.val)
    metrics["energy_val_mean"] = float(np.mean(val_e))
    return metrics
