"""Realized false-positive rate of the calibrated flags (conformal p-value <= α) on test
rows of the normal class that neither training nor calibration saw.

Datasets: sklearn's digits (the `digits` recipe, digit 9 the anomaly) and sklearn's
breast-cancer table written to CSV and trained with the `tabular` recipe (benign normal,
malignant the anomaly); optionally KDDCUP99 under both protocols (`--kdd`: the paper's
`kddcup99`, heavy with duplicated rows, and `nids`). Each split seed re-draws which rows
train, calibrate and test; the guarantee is E[FPR] <= α over those draws, so the mean
over split seeds is the figure to compare with α, each single run varies around it.

    MEG_DATA_DIR=... .venv/bin/python bench/calibration.py --splits 0 1 2 3 4 [--kdd]

Writes bench/results/calibration.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import save_json, start_run, table, train_recipe  # noqa: E402

ALPHAS = (0.01, 0.05)
METRICS = ("auroc", "n_test", "n_calibration",
           *(f"{k}@{a:g}" for a in ALPHAS for k in ("fpr", "recall", "precision")))


def breast_cancer_csv(directory: Path) -> Path:
    """sklearn's breast-cancer data (bundled, no download) as a CSV with a text label."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    frame["diagnosis"] = frame["diagnosis"].map({0: "malignant", 1: "benign"})
    path = directory / "breast_cancer.csv"
    frame.to_csv(path, index=False)
    return path


def runs(csv: Path, kdd: bool) -> list[tuple[str, str, list[str]]]:
    """(name, recipe, --set overrides) of each dataset."""
    out = [("digits", "digits", []),
           ("breast_cancer", "tabular", [f"data.path={str(csv)!r}", "data.label='diagnosis'",
                                         "data.normal_values=['benign']"])]
    if kdd:
        out += [("kddcup99", "kddcup99", []), ("nids", "nids", [])]
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--kdd", action="store_true", help="also KDDCUP99 (paper and nids)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    info, command = start_run("calibration.py", args.threads, argv)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        csv = breast_cancer_csv(Path(tmp))
        for name, recipe, sets in runs(csv, args.kdd):
            for split in args.splits:
                r = train_recipe(recipe, None, [*sets, f"data.split_seed={split}"], args.seed,
                                 METRICS)
                r.update(dataset=name, split_seed=split)
                results.append(r)
                m = r["metrics"]
                print(f"{name} split {split}: " + ", ".join(
                    f"{k} {m[k]:.4f}" for k in METRICS if isinstance(m[k], float)), flush=True)
    rows = []
    for name in dict.fromkeys(r["dataset"] for r in results):
        mine = [r["metrics"] for r in results if r["dataset"] == name]
        rows.append([name, len(mine), mine[0]["n_calibration"],
                     int(mine[0]["n_test"]),
                     *(f"{np.mean([m[f'fpr@{a:g}'] for m in mine]):.4f} "
                       f"[{min(m[f'fpr@{a:g}'] for m in mine):.3f}, "
                       f"{max(m[f'fpr@{a:g}'] for m in mine):.3f}]" for a in ALPHAS)])
    print(table(["dataset", "splits", "calibration rows", "test rows (all)",
                 *(f"FPR at α={a:g}: mean [min, max]" for a in ALPHAS)], rows))
    save_json("calibration", {"machine": info, "command": command, "results": results,
                              "wall_minutes": round((time.perf_counter() - t0) / 60, 2)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
