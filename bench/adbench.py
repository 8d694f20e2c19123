"""ADBench classical tabular datasets, one-class protocol: meg's score variants against
PyOD detectors on identical rows.

    MEG_DATA_DIR=/work/shared/data .venv/bin/python bench/adbench.py
        [--seeds 3] [--steps 1000] [--only NAME,...] [--datasets 6_cardio,...]
        [--quick] [--threads 1] [--from-results]

Per dataset (`$MEG_DATA_DIR/adbench/*.npz`, arrays X and y, 1 = anomaly) and split seed
s in 0..seeds-1: the normal rows are shuffled (seed s); 60% are the training share,
the other 40% plus every anomaly the test set. A quarter of the training share is held
out as calibration rows (never trained on), so every method fits on the same 45% of
the normal rows. Features are min-max scaled with those fitting rows' min and max
(constant columns map to 0), for every method alike. Every calibration row calibrates
the conformal p-values (`meg.scoring.conformal_pvalues`) of every method's scores: the
ECDFs that combine meg's energy with the support distance are fitted on the training
rows (`meg.support.fit_support`), so the combined score does not depend on the
calibration rows and its p-values stay exact. The calibration table is the share of
the test set's normal rows whose p-value is <= α (the realized false positive rate; α
is what it should be at most).

Methods:
- meg: the `tabular` recipe (`--steps` generator steps, one torch thread), trained in
  process; its score variants (`meg.support`; bench/common.py `support_scores`):
  `energy`, `knn` (distance to the nearest distinct training row), `energy+knn`
  (weighted Fisher combination of both surprises), and the same two in the encoder's
  latent space (`knn-latent`, `energy+knn-latent`); `energy+knn-equal`, the ablation
  of the energy's weight (equal weights, same ECDFs).
- PyOD (bench/baselines.py, defaults unless stated): IForest, KNN, ECOD, OCSVM (fitted
  on at most 5,000 rows), AutoEncoder (PyOD's defaults: 10 epochs of batch 32).

Metrics: AUROC and AUPRC (anomaly = positive) on the test set, mean over the split
seeds; per dataset each meg variant is ranked against the five peers by mean AUROC
(1 = best, ties averaged), and the ranks averaged over the datasets.

`--quick`: 1 seed, 300 steps, 3 datasets; writes bench/results/adbench_quick.json only.
Otherwise writes bench/results/adbench.json and the `adbench` section of
docs/benchmarks.md (which also reads bench/results/kdd.json for the choice of the
default score).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meg.bundle import DataSpec
from meg.support import REFERENCE_CAP
from training.data import Dataset
from training.data.files import data_dir
from training.evaluate import anomaly_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import LABELS, run_baseline  # noqa: E402
from common import (  # noqa: E402
    EQUAL_WEIGHTS,
    ROOT,
    SUPPORT_VARIANTS,
    realized_fpr,
    run_line,
    save_json,
    start_run,
    support_scores,
    table,
    train_recipe,
    write_section,
)

TRAIN_SHARE = 0.6  # of the normal rows: the training share; the rest is test
CAL_SHARE = 0.25  # of the training share: held-out calibration rows
ALPHAS = (0.01, 0.05)
MEG = tuple(f"meg-{v}" for v in (*SUPPORT_VARIANTS, EQUAL_WEIGHTS))
PEERS = ("iforest", "knn", "ecod", "ocsvm", "autoencoder")
AE_EPOCHS, AE_BATCH = 10, 32  # PyOD's AutoEncoder defaults
QUICK_DATASETS = ("6_cardio", "29_Pima", "38_thyroid")


@dataclass
class Split:
    """One seeded split of a dataset, min-max scaled on `train`."""

    train: np.ndarray  # (N, D) float32: the rows every method fits on
    cal: np.ndarray  # held-out normal rows calibrating every method's p-values
    test_x: np.ndarray  # test normal rows first, then every anomaly
    test_y: np.ndarray  # (T,) int64, 1 = anomaly


def dataset_names() -> list[str]:
    paths = sorted((data_dir() / "adbench").glob("*.npz"), key=lambda p: int(p.stem.split("_")[0]))
    if not paths:
        raise SystemExit(f"no ADBench files under {data_dir() / 'adbench'} (set MEG_DATA_DIR)")
    return [p.stem for p in paths]


def load_npz(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_dir() / "adbench" / f"{name}.npz", allow_pickle=False) as f:
        return np.asarray(f["X"], dtype=np.float64), np.asarray(f["y"]).astype(np.int64)


def make_split(x: np.ndarray, y: np.ndarray, seed: int) -> Split:
    """The protocol's split (module docstring)."""
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(y == 0)
    normal = normal[rng.permutation(len(normal))]
    n_share = int(round(TRAIN_SHARE * len(normal)))
    share, test_normal = normal[:n_share], normal[n_share:]
    n_cal = int(round(CAL_SHARE * n_share))
    cal, train = share[:n_cal], share[n_cal:]
    lo, hi = x[train].min(axis=0), x[train].max(axis=0)
    scale = np.where(hi > lo, 1.0 / np.where(hi > lo, hi - lo, 1.0), 0.0)

    def prep(rows: np.ndarray) -> np.ndarray:
        return ((x[rows] - lo) * scale).astype(np.float32)

    anomalies = np.flatnonzero(y == 1)
    return Split(
        train=prep(train), cal=prep(cal),
        test_x=prep(np.concatenate([test_normal, anomalies])),
        test_y=np.concatenate([np.zeros(len(test_normal), np.int64), np.ones(len(anomalies), np.int64)]),
    )


def run_split(name: str, seed: int, split: Split, methods: list[str], steps: int,
              threads: int) -> list[dict[str, Any]]:
    contamination = float(split.test_y.mean())
    base = {"dataset": name, "seed": seed, "train_rows": len(split.train),
            "cal_rows": len(split.cal),
            "test_rows": len(split.test_y), "test_anomalies": int(split.test_y.sum())}
    out: list[dict[str, Any]] = []
    if any(m in MEG for m in methods):
        ds = Dataset(name=name, train=split.train,
                     val=split.cal,
                     test_x=split.test_x, test_y=split.test_y,
                     spec=DataSpec(kind="tabular", shape=[split.train.shape[1]],
                                   feature_names=[f"x{i}" for i in range(split.train.shape[1])]),
                     contamination=contamination)
        sets = [f"train.steps={steps}"] + ([f"train.num_threads={threads}"] if threads > 0 else [])
        rec = train_recipe("tabular", ds, sets, seed, ("auroc",), keep_model=True)
        sup = support_scores(rec["model"], split.train, {"test": split.test_x, "cal": split.cal})
        for m in methods:
            if m not in MEG:
                continue
            v = m.removeprefix("meg-")
            s = sup.scores[v]
            space = "latent" if v.endswith("latent") else "input"
            score_s = sup.seconds["energy"] + (sup.seconds[space] if v != "energy" else 0.0)
            out.append({**base, "method": m,
                        "metrics": {**anomaly_metrics(s["test"], split.test_y, contamination),
                                    **realized_fpr(s["cal"], s["test"], split.test_y, ALPHAS)},
                        "train_seconds": rec["wall_seconds"], "score_seconds": round(score_s, 2),
                        "reference_rows": sup.reference_rows.get(space),
                        "energy_weight": sup.energy_weight.get(space)
                        if v.startswith("energy+knn") and v != EQUAL_WEIGHTS else None,
                        "command": rec["command"]})
    for m in methods:
        if m in MEG:
            continue
        b = run_baseline(m, split.train, split.test_x, split.test_y, contamination, seed=seed,
                         epochs=AE_EPOCHS, batch_size=AE_BATCH, calibration_x=split.cal)
        assert b.scores is not None and b.calibration_scores is not None
        out.append({**base, "method": m, "params": b.params,
                    "metrics": {**b.metrics,
                                **realized_fpr(b.calibration_scores, b.scores, split.test_y,
                                               ALPHAS)},
                    "train_seconds": round(b.fit_seconds, 2),
                    "score_seconds": round(b.score_seconds, 2)})
    return out


# --------------------------------------------------------------------------- summary


def per_dataset(runs: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """dataset -> method -> mean of metric `key` over the seeds."""
    acc: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        acc.setdefault(r["dataset"], {}).setdefault(r["method"], []).append(r["metrics"][key])
    return {d: {m: float(np.mean(v)) for m, v in ms.items()} for d, ms in acc.items()}


def group_ranks(means: dict[str, dict[str, float]], group: list[str]) -> dict[str, dict[str, float]]:
    """dataset -> member -> rank within `group` by the mean metric (1 best, ties
    averaged); datasets missing any member are skipped."""
    from scipy.stats import rankdata

    out = {}
    for d, ms in means.items():
        if all(g in ms for g in group):
            r = rankdata([-ms[g] for g in group])
            out[d] = {g: float(x) for g, x in zip(group, r, strict=True)}
    return out


def ranks_against_peers(means: dict[str, dict[str, float]], method: str,
                        peers: list[str]) -> dict[str, float]:
    """dataset -> rank of `method` among `method` + `peers` by the mean metric."""
    return {d: r[method] for d, r in group_ranks(means, [method, *peers]).items()}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    methods = list(dict.fromkeys(r["method"] for r in runs))
    peers = [m for m in methods if m not in MEG]
    auroc, auprc = per_dataset(runs, "auroc"), per_dataset(runs, "auprc")
    datasets = sorted(auroc, key=lambda d: int(d.split("_")[0]))
    rows = []
    for m in methods:
        others = [p for p in peers if p != m]
        rk = ranks_against_peers(auroc, m, others)
        rk_pr = ranks_against_peers(auprc, m, others)
        group = group_ranks(auroc, [m, *others])
        rows.append({
            "method": m,
            # every member's mean AUROC rank in this method's group (itself + the peers)
            "group_mean_rank_auroc": {g: float(np.mean([r[g] for r in group.values()]))
                                      for g in [m, *others]} if group else {},
            "mean_auroc": float(np.mean([auroc[d][m] for d in datasets if m in auroc[d]])),
            "mean_auprc": float(np.mean([auprc[d][m] for d in datasets if m in auprc[d]])),
            "mean_rank_auroc": float(np.mean(list(rk.values()))) if rk else None,
            "mean_rank_auprc": float(np.mean(list(rk_pr.values()))) if rk_pr else None,
            "ranked_against": others,
            "fpr": {f"{k}@{a:g}": float(np.mean([r["metrics"][f"{k}@{a:g}"] for r in runs
                                                 if r["method"] == m]))
                    for a in ALPHAS for k in ("fpr", "tpr")},
            "seconds_mean": float(np.mean([r["train_seconds"] + r["score_seconds"]
                                           for r in runs if r["method"] == m])),
        })
    return {"datasets": datasets, "methods": methods, "auroc": auroc, "auprc": auprc,
            "rows": rows}


def label(method: str) -> str:
    if method in MEG:
        return f"**meg** `{method.removeprefix('meg-')}`"
    return LABELS.get(method, method)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="meg," + ",".join(PEERS),
                   help="comma-separated: meg (every variant), " + ", ".join(PEERS))
    p.add_argument("--datasets", default="", help="comma-separated dataset stems (default: all)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000, help="meg generator steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    p.add_argument("--quick", action="store_true", help="1 seed, 300 steps, 3 datasets; no docs")
    p.add_argument("--note", default="", help="a sentence added to the doc section (stored)")
    p.add_argument("--from-results", action="store_true",
                   help="re-render the doc section from bench/results/adbench.json")
    args = p.parse_args()
    if args.from_results:
        data = json.loads((ROOT / "bench" / "results" / "adbench.json").read_text())
        data["summary"] = summarize(data["runs"])  # the same runs, summaries of this code
        data["choice"] = choice(data["summary"])
        if args.note:
            data["note"] = args.note
        save_json("adbench", data)
        render(data)
        return
    methods: list[str] = []
    for name in (s.strip() for s in args.only.split(",") if s.strip()):
        for n in (MEG if name == "meg" else (name,)):
            if n not in MEG + PEERS:
                raise SystemExit(f"--only {name!r}: choose from meg, {', '.join(MEG + PEERS)}")
            methods.append(n)
    names = dataset_names()
    if args.datasets:
        names = [n for n in names if n in args.datasets.split(",")]
    elif args.quick:
        names = [n for n in names if n in QUICK_DATASETS]
    seeds = 1 if args.quick else args.seeds
    steps = 300 if args.quick else args.steps

    info, command = start_run("adbench.py", args.threads, sys.argv[1:])
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for name in names:
        x, y = load_npz(name)
        for seed in range(seeds):
            split = make_split(x, y, seed)
            for r in run_split(name, seed, split, methods, steps, args.threads):
                runs.append(r)
                m = r["metrics"]
                print(f"{name:18s} seed {seed} {r['method']:22s} AUROC {m['auroc']:.4f} "
                      f"AUPRC {m['auprc']:.4f} FPR@.05 {m['fpr@0.05']:.3f} "
                      f"({r['train_seconds'] + r['score_seconds']:.1f} s)", flush=True)
    total = time.perf_counter() - t_start
    data = {"machine": info, "command": command, "quick": args.quick, "seeds": list(range(seeds)),
            "meg_steps": steps, "train_share": TRAIN_SHARE, "cal_share": CAL_SHARE,
            "alphas": list(ALPHAS), "ae": {"epochs": AE_EPOCHS, "batch_size": AE_BATCH},
            "total_wall_seconds": round(total, 1),
            "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()},
            "note": args.note, "summary": summarize(runs), "runs": runs}
    data["choice"] = choice(data["summary"])
    path = save_json("adbench_quick" if args.quick else "adbench", data)
    print(f"wrote {path.relative_to(ROOT)}; total wall time {total / 60:.1f} min")
    print(summary_table(data["summary"]))
    if not args.quick:
        render(data)


# --------------------------------------------------------------------------- docs


def summary_table(s: dict[str, Any]) -> str:
    rows = sorted(s["rows"], key=lambda r: -r["mean_auroc"])
    return table(
        ["method", "mean AUROC", "mean AUPRC", "mean rank by AUROC (vs the 5 peers)",
         "mean rank by AUPRC", "mean wall time a run (s)"],
        [[label(r["method"]), f"{r['mean_auroc']:.4f}", f"{r['mean_auprc']:.4f}",
          "—" if r["method"] not in MEG or r["mean_rank_auroc"] is None
          else f"{r['mean_rank_auroc']:.2f}",
          "—" if r["method"] not in MEG or r["mean_rank_auprc"] is None
          else f"{r['mean_rank_auprc']:.2f}",
          f"{r['seconds_mean']:.1f}"] for r in rows])


def dataset_table(s: dict[str, Any], key: str) -> str:
    methods = s["methods"]
    best = {d: max(s[key][d].values()) for d in s["datasets"]}
    body = []
    for d in s["datasets"]:
        cells = []
        for m in methods:
            v = s[key][d].get(m)
            cells.append("—" if v is None else (f"**{v:.3f}**" if v == best[d] else f"{v:.3f}"))
        body.append([f"`{d}`", *cells])
    return table(["dataset", *(label(m) for m in methods)], body)


def fpr_table(data: dict[str, Any]) -> str:
    runs = data["runs"]
    s = data["summary"]
    methods = s["methods"]
    body = []
    for d in s["datasets"]:
        rs = [r for r in runs if r["dataset"] == d]
        n_conf = int(np.mean([r.get("cal_rows", r.get("cal_conformal_rows", 0)) for r in rs]))
        cells = []
        for m in methods:
            mr = [r["metrics"] for r in rs if r["method"] == m]
            cells.append(" / ".join(f"{np.mean([x[f'fpr@{a:g}'] for x in mr]):.3f}" for a in ALPHAS))
        body.append([f"`{d}`", str(n_conf), *cells])
    body.append(["mean", "", *(" / ".join(f"{r['fpr'][f'fpr@{a:g}']:.3f}" for a in ALPHAS)
                               for r in s["rows"])])
    body.append(["power (anomalies flagged), mean", "",
                 *(" / ".join(f"{r['fpr'][f'tpr@{a:g}']:.3f}" for a in ALPHAS)
                   for r in s["rows"])])
    return table(["dataset", "calibration rows", *(label(m) for m in methods)], body)


def kdd_f1() -> dict[str, dict[str, float]]:
    """bench/results/kdd.json's mean F1 per method ({} when absent)."""
    path = ROOT / "bench" / "results" / "kdd.json"
    if not path.exists():
        return {}
    return {r["method"]: {"f1": r["f1"], "n": r["n"]}
            for r in json.loads(path.read_text()).get("summary", [])}


KDD_PEERS = ("iforest", "ecod", "ocsvm", "autoencoder", "knn")
SERVED = ("meg-energy", "meg-knn", "meg-energy+knn")  # what the service computes


def choice(s: dict[str, Any]) -> dict[str, Any]:
    """The default score by the stated rule: among the served variants, the lowest mean
    rank against the peers over the ADBench datasets (AUROC) and KDD (F1), ties broken by
    the higher ADBench mean AUROC."""
    rows = {r["method"]: r for r in s["rows"]}
    kdd = kdd_f1()
    peers_kdd = [kdd[p]["f1"] for p in KDD_PEERS if p in kdd]
    out = []
    for m in SERVED:
        if m not in rows or rows[m]["mean_rank_auroc"] is None:
            continue
        r = rows[m]
        n_ad = len(s["datasets"])
        ranks = r["mean_rank_auroc"] * n_ad
        n = n_ad
        f1 = kdd.get(m, {}).get("f1")
        if f1 is not None and peers_kdd:
            ranks += 1 + sum(p > f1 for p in peers_kdd)
            n += 1
        out.append({"method": m, "rank": ranks / n, "mean_auroc": r["mean_auroc"],
                    "kdd_f1": f1, "benchmarks": n})
    out.sort(key=lambda c: (c["rank"], -c["mean_auroc"]))
    return {"candidates": out, "pick": out[0]["method"].removeprefix("meg-") if out else None}


def choice_text(s: dict[str, Any]) -> str:
    """The choice of the default score, from these results and bench/results/kdd.json."""
    from meg.support import DEFAULT_SCORE

    rows = {r["method"]: r for r in s["rows"]}
    peers = [r for r in s["rows"] if r["method"] not in MEG]
    if not peers or not any(m in rows for m in MEG):
        return "Default score: not chosen (meg or the peers were not run)."
    best_peer = max(peers, key=lambda r: r["mean_auroc"])
    c = choice(s)
    lines = [f"`{x['method'].removeprefix('meg-')}`: mean rank {x['rank']:.2f} over "
             f"{x['benchmarks']} benchmarks, ADBench mean AUROC {x['mean_auroc']:.4f}, KDD F1 "
             + (f"{x['kdd_f1']:.4f}" if x["kdd_f1"] is not None else "not run")
             for x in c["candidates"]]
    pick = c["pick"]
    out = ["**Choice of the default score.** Rule (written after these numbers were in, "
           "so the datasets kept aside are what will confirm it or not): "
           "among the variants the service computes (`energy`, `knn`, `energy+knn`; the "
           "latent ones would need the encoder at serving time), the lowest mean rank "
           "against the PyOD peers over the ADBench datasets (by AUROC) and KDD (by F1, "
           "against the peers measured there), ties broken by the higher ADBench mean "
           "AUROC. " + "; ".join(lines) + f". Pick: **`{pick}`**; the code's default "
           f"(`meg.support.DEFAULT_SCORE`) is `{DEFAULT_SCORE}`"
           + (" (the same)." if pick == DEFAULT_SCORE else " — **they differ**: fix one.")]
    if pick is not None:
        m = f"meg-{pick}"
        r = rows[m]
        group = r.get("group_mean_rank_auroc", {})
        best_rank = min(group.values()) if group else None
        out.append(
            f"Goals with `{pick}`: ADBench mean AUROC {r['mean_auroc']:.4f} against the best "
            f"peer's {best_peer['mean_auroc']:.4f} ({label(best_peer['method'])}): **"
            f"{'met' if r['mean_auroc'] >= best_peer['mean_auroc'] else 'not met'}**; mean "
            f"rank {r['mean_rank_auroc']:.2f} among itself and the five peers, whose mean "
            "ranks in that group are " + ", ".join(
                f"{label(g)} {v:.2f}" for g, v in group.items() if g != m)
            + f": best mean rank **{'met' if group and group[m] == best_rank else 'not met'}**.")
    eq = rows.get(f"meg-{EQUAL_WEIGHTS}")
    if eq is not None and "meg-energy+knn" in rows and eq["mean_rank_auroc"] is not None:
        r = rows["meg-energy+knn"]
        out.append(
            "The energy's weight in `energy+knn` (its rank agreement with the distance, "
            "`meg.support.agreement_weight`; label-free, from the training rows) was chosen "
            "after these datasets' numbers were seen, over equal weights (`energy+knn-equal`, "
            f"the same ECDFs: mean AUROC {eq['mean_auroc']:.4f}, mean rank "
            f"{eq['mean_rank_auroc']:.2f}, against {r['mean_auroc']:.4f} and "
            f"{r['mean_rank_auroc']:.2f} weighted): the datasets kept aside are its test.")
    return "\n\n".join(out)


def weight_note(runs: list[dict[str, Any]]) -> str:
    """The energy's weight in `energy+knn` over the runs, in words ('' when not recorded)."""
    w = [r["energy_weight"] for r in runs
         if r["method"] == "meg-energy+knn" and r.get("energy_weight") is not None]
    if not w:
        return ""
    return (f"; the weight was {np.mean(w):.2f} on average over the runs, from "
            f"{min(w):.2f} to {max(w):.2f}")


def render(data: dict[str, Any]) -> None:
    s = data["summary"]
    seeds = len(data["seeds"])
    write_section("adbench", "\n".join([
        "## ADBench classical datasets, one-class protocol (`bench/adbench.py`)",
        "",
        run_line(data, data["total_wall_seconds"] / 60),
        "",
        f"Protocol: {len(s['datasets'])} ADBench classical datasets "
        "(`$MEG_DATA_DIR/adbench/*.npz`, see the data README), split seeds "
        f"{', '.join(map(str, data['seeds']))}: per seed the normal rows are shuffled; "
        f"{100 * data['train_share']:.0f}% of them are the training share, the other "
        f"{100 * (1 - data['train_share']):.0f}% plus every anomaly the test set. "
        f"{100 * data['cal_share']:.0f}% of the training share is held out as calibration "
        "rows, so every method fits on the same "
        f"{100 * data['train_share'] * (1 - data['cal_share']):.0f}% of the normal rows, "
        "min-max scaled on them. Every calibration row calibrates every method's conformal "
        "p-values (`meg.scoring.conformal_pvalues`); meg's `energy+knn` fits its "
        "combination on the training rows, so no calibration row is spent on it. AUROC / "
        f"AUPRC with anomaly = positive, mean over the {seeds} seeds.",
        "",
        f"- meg: `meg train tabular --set train.steps={data['meg_steps']}` (one torch "
        "thread), trained in process; score variants from `meg.support`: `energy` (E(x)), "
        "`knn` (Euclidean distance to the nearest distinct training row, reference set "
        f"capped at {REFERENCE_CAP:,} rows), `energy+knn` (weighted sum of both components' "
        "surprises −log p against their training rows' scores, the distance's leave-one-out, "
        "the energy weighted by its rank agreement with the distance over the distinct "
        "training rows: "
        f"`meg.support.fit_support`{weight_note(data['runs'])}), the same two searching the "
        "encoder's latent codes (`-latent`), and `energy+knn-equal`, the ablation of that "
        "weight (equal weights: Fisher's combination on the same ECDFs).",
        f"- Peers (`bench/baselines.py`, PyOD defaults): IForest, KNN (5th neighbour), ECOD, "
        f"OCSVM (≤ 5,000 rows), AutoEncoder ({data['ae']['epochs']} epochs of batch "
        f"{data['ae']['batch_size']}: PyOD's defaults). Fitted on the same rows.",
        "- Rank: per dataset, each meg variant ranked among itself and the five peers by mean "
        "AUROC (1 best, 6 worst, ties averaged), averaged over the datasets.",
        "",
        summary_table(s),
        "",
        choice_text(s),
        "",
        "### AUROC per dataset (mean over seeds; best in bold)",
        "",
        dataset_table(s, "auroc"),
        "",
        "### AUPRC per dataset",
        "",
        dataset_table(s, "auprc"),
        "",
        "### Calibration: realized false-positive rate of the conformal p-values",
        "",
        "Share of the test set's normal rows with p ≤ α, at α = "
        f"{' / '.join(f'{a:g}' for a in ALPHAS)} (each cell: both), p-values against every "
        "calibration row. A valid p-value keeps it at most α up to sampling noise; where "
        "there are fewer than 1/α − 1 calibration rows no p-value can reach α and the rate "
        "is 0 by construction; with n rows the expected rate is ⌊α(n+1)⌋/(n+1). The last "
        "row is the power: the share of anomalies flagged at the same α.",
        "",
        fpr_table(data),
    ]))
    print("wrote the adbench section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
