"""MNIST held-out digit: meg against PyOD baselines (AUPRC per held-out digit), beside
the paper's published MEG AUPRC.

    MEG_DATA_DIR=/work/shared/data .venv/bin/python bench/mnist.py
        [--digits 1,4,5,7,9] [--steps 300] [--seeds 1] [--only meg,iforest,ecod]
        [--threads 0] [--quick]

For each held-out digit d: `training.data.mnist.load_mnist_dataset(d, split_seed)` (the
10k t10k images only: 80% of the normal digits train, the other 20% plus every image of
d test; pixels scaled to [-1, 1]); meg trains the `mnist` recipe with
`data.anomaly_digit=d` and `--steps` generator steps (the recipe's 1,500 do not fit the
CPU budget); IForest and ECOD (PyOD defaults) fit the same training rows (flattened
pixels; both are invariant to the per-pixel affine scaling) and score the same test rows.
Metric: AUPRC with the held-out digit as the positive class
(`training.evaluate.anomaly_metrics`). The default digits are those whose published MEG
AUPRC REFERENCE.md holds.

`--quick`: digit 1 only, meg 20 steps; prints the table, writes
bench/results/mnist_quick.json only. Otherwise writes bench/results/mnist.json,
docs/img/mnist_auprc.png and the `mnist` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import LABELS, RANDOM, run_baseline, summarize  # noqa: E402
from common import (  # noqa: E402
    ROOT,
    run_line,
    save_figure,
    save_json,
    start_run,
    table,
    train_recipe,
    write_section,
)

METHODS = ("meg", "iforest", "ecod")
KNOWN = METHODS + ("ocsvm", "autoencoder", "deepsvdd")
PLOT = ROOT / "docs" / "img" / "mnist_auprc.png"
# REFERENCE.md: a public leaderboard's copy of the paper's table (Kumar et al. 2019).
PUBLISHED = {1: 0.281, 4: 0.401, 5: 0.402, 7: 0.290, 9: 0.342}


def run_meg(ds: Any, digit: int, seed: int, split_seed: int, steps: int,
            threads: int) -> dict[str, Any]:
    sets = [f"data.anomaly_digit={digit}", f"data.split_seed={split_seed}", f"train.steps={steps}"]
    if threads > 0:
        sets.append(f"train.num_threads={threads}")
    return {"method": "meg", "digit": digit, **train_recipe("mnist", ds, sets, seed, ("auprc", "auroc"))}


def label(method: str) -> str:
    return "**meg**" if method == "meg" else LABELS.get(method, method)


def cell(rows: list[dict[str, Any]], key: str = "auprc") -> str:
    if not rows:
        return "—"
    mean, std = summarize([r["metrics"][key] for r in rows])
    return f"{mean:.3f} ± {std:.3f}" if len(rows) > 1 else f"{mean:.3f}"


def plot(digits: list[int], methods: list[str], means: dict[tuple[str, int], tuple[float, float]],
         path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = [(label(m).replace("**", ""), m) for m in methods] + [("MEG (published)", "pub")]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = {"meg": "#c44e52", "iforest": "#4c72b0", "ecod": "#55a868", "pub": "#bbbbbb"}
    x = np.arange(len(digits))
    for j, (name, m) in enumerate(series):
        if m == "pub":
            vals = [PUBLISHED.get(d, np.nan) for d in digits]
            errs = [0.0] * len(digits)
        else:
            vals = [means.get((m, d), (np.nan, 0.0))[0] for d in digits]
            errs = [means.get((m, d), (np.nan, 0.0))[1] for d in digits]
        ax.bar(x + (j - (len(series) - 1) / 2) * width, vals, width, yerr=errs, capsize=3,
               label=name, color=colors.get(m), edgecolor="black",
               hatch="//" if m == "pub" else None)
    ax.set_xticks(x)
    ax.set_xticklabels([f"digit {d}" for d in digits])
    ax.set_ylabel("AUPRC (held-out digit = positive)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits", default="1,4,5,7,9", help="held-out digits (0-9), comma-separated")
    p.add_argument("--steps", type=int, default=300, help="meg generator steps (recipe: 1500)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per digit (training/random_state)")
    p.add_argument("--split-seed", type=int, default=0, help="held-out split seed (recipe: 0)")
    p.add_argument("--only", default=",".join(METHODS), help=f"comma-separated: {', '.join(KNOWN)}")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--quick", action="store_true", help="digit 1, meg 20 steps; no docs written")
    p.add_argument("--note", default="", help="a sentence added to the doc section (stored)")
    p.add_argument("--from-results", action="store_true",
                   help="re-render the plot and doc section from bench/results/mnist.json")
    args = p.parse_args()
    if args.from_results:
        data = json.loads((ROOT / "bench" / "results" / "mnist.json").read_text())
        data.setdefault("methods", sorted({r["method"] for r in data["runs"]},
                                          key=lambda m: KNOWN.index(m)))
        if args.note:
            data["note"] = args.note
        save_json("mnist", data)
        render(data)
        return
    digits = [1] if args.quick else [int(d) for d in args.digits.split(",") if d.strip()]
    steps = 20 if args.quick else args.steps
    methods = [m.strip() for m in args.only.split(",") if m.strip()]
    bad = [m for m in methods if m not in KNOWN] + [str(d) for d in digits if not 0 <= d <= 9]
    if bad:
        raise SystemExit(f"unknown method(s)/digit(s): {', '.join(bad)}")


    from training.data.mnist import load_mnist_dataset

    info, command = start_run("mnist.py", args.threads, sys.argv[1:])
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    results: list[dict[str, Any]] = []
    splits: dict[int, dict[str, Any]] = {}
    for d in digits:
        ds = load_mnist_dataset(anomaly_digit=d, seed=args.split_seed)
        anomaly_share = float(ds.test_y.mean())
        splits[d] = {**(ds.info or {}), "test_anomaly_share": anomaly_share}
        print(f"digit {d}: {len(ds.train)} train, {len(ds.test_y)} test rows "
              f"({anomaly_share:.3f} anomalies = AUPRC of a random score)", flush=True)
        for m in methods:
            for seed in range(args.seeds if m == "meg" or m in RANDOM else 1):
                if m == "meg":
                    r = run_meg(ds, d, seed, args.split_seed, steps, args.threads)
                else:
                    b = run_baseline(m, ds.train, ds.test_x, ds.test_y, ds.contamination,
                                     seed=seed)
                    r = {**b.to_dict(), "digit": d,
                         "command": f"bench/baselines.py run_baseline({m!r}, seed={seed})"}
                results.append(r)
                print(f"  {m:10s} seed {seed}: AUPRC {r['metrics']['auprc']:.4f} "
                      f"AUROC {r['metrics']['auroc']:.4f} ({r['wall_seconds']:.1f} s)", flush=True)
    total_wall = time.perf_counter() - t_start
    data = {
        "machine": info, "command": command, "quick": args.quick, "digits": digits,
        "methods": methods, "meg_steps": steps, "seeds": list(range(args.seeds)),
        "split_seed": args.split_seed, "total_wall_seconds": round(total_wall, 1),
        "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()},
        "note": args.note,
        "splits": {str(k): v for k, v in splits.items()},
        "published_meg_auprc": PUBLISHED, "runs": results,
    }
    data["summary"] = [{"method": m, "digit": d, "auprc": mean, "auprc_std": std}
                       for (m, d), (mean, std) in auprc_means(data).items()]
    print(markdown_table(data))
    print(f"total wall time {total_wall / 60:.1f} min")
    path = save_json("mnist_quick" if args.quick else "mnist", data)
    print(f"wrote {path.relative_to(ROOT)}")
    if not args.quick:
        render(data)


def pick(data: dict[str, Any], m: str, d: int) -> list[dict[str, Any]]:
    return [r for r in data["runs"] if r["method"] == m and r["digit"] == d]


def auprc_means(data: dict[str, Any]) -> dict[tuple[str, int], tuple[float, float]]:
    return {(m, d): summarize([r["metrics"]["auprc"] for r in pick(data, m, d)])
            for m in data["methods"] for d in data["digits"] if pick(data, m, d)}


def share(data: dict[str, Any], d: int) -> float:
    return float(data["splits"][str(d)]["test_anomaly_share"])


def markdown_table(data: dict[str, Any]) -> str:
    digits, methods, means = data["digits"], data["methods"], auprc_means(data)
    header = (["held-out digit", "anomaly share of test (random AUPRC)"]
              + [f"{label(m)} AUPRC" for m in methods]
              + ["MEG published AUPRC", "meg wall time (s)"])
    rows: list[list[Any]] = []
    for d in digits:
        best = max(methods, key=lambda m, d=d: means.get((m, d), (-1.0, 0.0))[0])
        cells = [cell(pick(data, m, d)) for m in methods]
        cells = [f"**{c}**" if m == best else c for m, c in zip(methods, cells, strict=True)]
        meg_wall = [r["wall_seconds"] for r in pick(data, "meg", d)]
        rows.append([d, f"{share(data, d):.3f}", *cells,
                     f"{PUBLISHED[d]:.3f}" if d in PUBLISHED else "not in REFERENCE.md",
                     f"{summarize(meg_wall)[0]:.1f}" if meg_wall else "—"])
    mean_row: list[Any] = ["mean", f"{summarize([share(data, d) for d in digits])[0]:.3f}"]
    for m in methods:
        vals = [means[(m, d)][0] for d in digits if (m, d) in means]
        mean_row.append(f"{summarize(vals)[0]:.3f}" if vals else "—")
    pub = [PUBLISHED[d] for d in digits if d in PUBLISHED]
    mean_row += [f"{summarize(pub)[0]:.3f}" + ("" if len(pub) == len(digits) else " (subset)")
                 if pub else "—", ""]
    rows.append(mean_row)
    return table(header, rows)


def render(data: dict[str, Any]) -> None:
    """The plot and the `mnist` section of docs/benchmarks.md from a results dict."""
    from training.config import load_recipe

    digits, methods, means = data["digits"], data["methods"], auprc_means(data)
    steps, seeds = data["meg_steps"], len(data["seeds"])
    total_wall = data["total_wall_seconds"]
    plot(digits, methods, means, PLOT,
         f"MNIST held-out digit, AUPRC (meg {steps} steps, {seeds} seed(s)); hatched: published")
    recipe = load_recipe("mnist").train
    n_train = data["splits"][str(digits[0])].get("train", 1)
    passes = steps * recipe.n_critic * recipe.batch_size / max(n_train, 1)
    below = {m: [d for d in digits if (m, d) in means and means[(m, d)][0] < share(data, d)]
             for m in methods}
    wins = [d for d in digits if "meg" in methods
            and means.get(("meg", d), (-1, 0))[0] >= max(means.get((m, d), (-1, 0))[0] for m in methods)]
    findings = [f"meg has the best measured AUPRC on digit(s) {', '.join(map(str, wins)) or 'none'}."
                if "meg" in methods else ""]
    findings += [f"{label(m)} scores below the random-score AUPRC (the anomaly share) on digit(s) "
                 f"{', '.join(map(str, ds))}: worse than chance there." for m, ds in below.items() if ds]
    write_section("mnist", "\n".join([
        "## MNIST, held-out digit",
        "",
        run_line(data, total_wall / 60),
        "",
        f"Protocol: one digit is the anomaly class; `training.data.mnist.load_mnist_dataset` "
        f"with split seed {data['split_seed']} on the **10k t10k images only** (the only MNIST "
        f"part in meg's shared data): 80% of the normal digits train, the other 20% plus every "
        f"image of the held-out digit test. The paper trains on the 60k training set, and its "
        f"test set has a different anomaly share, so its AUPRC is not directly comparable "
        f"(a random score's AUPRC is the anomaly share, shown per digit). Digits: "
        f"{', '.join(map(str, digits))} (those whose published figure REFERENCE.md holds; "
        f"all ten take `--digits 0,1,2,3,4,5,6,7,8,9`). Metric: AUPRC, held-out digit positive, "
        f"via `training.evaluate.anomaly_metrics` for every method.",
        "",
        f"- meg: `meg train mnist --set data.anomaly_digit=D --set train.steps={steps}` — the "
        f"recipe's nets (conv, z 64, batch {recipe.batch_size}, n_critic {recipe.n_critic}, "
        f"λ {recipe.gp_weight:g}) but {steps} generator steps instead of the recipe's "
        f"{recipe.steps} (the energy net sees about {passes:.0f} passes over the training rows; "
        f"the paper: 55 epochs, z 128, 60k images) to fit a 20-minute CPU budget; {seeds} "
        f"seed(s), so no error bars.",
        "- IForest, ECOD: PyOD defaults, fitted on the same training rows (784 pixels), "
        "scoring the same test rows (`bench/baselines.py`).",
        "- MEG published: REFERENCE.md (a public leaderboard's copy of the paper's table).",
        "",
        markdown_table(data),
        "",
        *[f"- {f}" for f in findings if f],
        "",
        "![MNIST AUPRC per held-out digit](img/mnist_auprc.png)",
    ]))
    print(f"wrote {PLOT.relative_to(ROOT)} and the mnist section of docs/benchmarks.md")

if __name__ == "__main__":
    main()
