"""What the support scores cost in the service: POST /anomaly with 1,000 KDD records,
`score` = energy (what /anomaly computed before meg.support) against knn and energy+knn,
through a real uvicorn server on loopback, the calls of each variant alternated within
every repeat (bench/serve.py's `timeit_alternating`). Goal: every variant <= 2x energy.

    MEG_DATA_DIR=/work/shared/data .venv/bin/python bench/support_cost.py
        [--bundle DIR] [--repeats 20] [--rows 1000]

Without --bundle it trains a kddcup99 bundle for 100 steps into a temporary folder: the
cost depends on the reference set's size (the training rows deduplicated, capped at
meg.support.REFERENCE_CAP) and the data width (121), not on the model's quality. Writes
bench/results/support_cost.json and the `support_cost` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import machine_info, machine_line, save_json, table, write_section  # noqa: E402
from serve import server, timeit_alternating  # noqa: E402

from meg import bundle as B  # noqa: E402
from meg.support import VARIANTS  # noqa: E402

STEPS = 100


def train_bundle(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "meg.cli", "train", "kddcup99", "--out", str(out), "--quiet", "--run-dir", str(out.parent / "run"),
                    "--set", f"train.steps={STEPS}", "--set", "train.num_threads=1"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rows", type=int, default=1000)
    args = p.parse_args()
    from training.data.files import require_file
    from training.data.kdd import ANOMALY_LABEL, KDD_FILE, _read_kdd, kdd_records

    info = machine_info()
    print(f"machine: {machine_line(info)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "kdd"
            t0 = time.perf_counter()
            train_bundle(bundle)
            print(f"trained {bundle} in {time.perf_counter() - t0:.0f} s", flush=True)
        manifest = B.read_manifest(bundle)
        if manifest.support is None:
            raise SystemExit(f"{bundle}: the bundle has no support entry")
        ref = np.load(bundle / manifest.support.reference, allow_pickle=False, mmap_mode="r")
        # Two request sets: rows drawn from the whole file (mostly attack traffic, which
        # repeats: many equal a reference row and skip the search) and `normal.` rows, the
        # class this recipe never trains on (nearly all searched): the worst case.
        labels = _read_kdd(str(require_file(KDD_FILE)))["label"].to_numpy()
        rng = np.random.default_rng(0)
        sets = {"file rows": np.sort(rng.choice(len(labels), args.rows, replace=False)),
                "normal. rows": np.sort(rng.choice(np.flatnonzero(labels == ANOMALY_LABEL),
                                                   args.rows, replace=False))}
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        rows_out = []
        with server(bundle, **env) as base, httpx.Client(base_url=base, timeout=120) as client:
            for set_name, idx in sets.items():
                records = kdd_records(idx)

                def call(variant: str, records: list[dict[str, Any]] = records) -> Any:
                    def go() -> None:
                        r = client.post("/anomaly", json={"records": records, "score": variant})
                        r.raise_for_status()
                        assert r.json()["score"] == variant
                    return go

                knn = client.post("/anomaly", json={"records": records, "score": "knn"}).json()
                searched = sum(r["score"] > 0.0 for r in knn["results"])
                times = timeit_alternating([call(v) for v in VARIANTS], args.repeats, warmup=2)
                medians = dict(zip(VARIANTS, times, strict=True))
                rows_out += [{"records": set_name, "searched": searched, "score": v,
                              "median_seconds": medians[v],
                              "ratio_to_energy": medians[v] / medians["energy"]}
                             for v in VARIANTS]
    data = {"machine": info, "rows": args.rows, "repeats": args.repeats,
            "reference_rows": int(ref.shape[0]), "data_dim": int(ref.shape[1]),
            "bundle_steps": STEPS if args.bundle is None else None,
            "command": "MEG_DATA_DIR=... .venv/bin/python bench/support_cost.py "
                       + " ".join(sys.argv[1:]), "results": rows_out}
    save_json("support_cost", data)
    md = table(["records", "rows searched (the others equal a reference row)", "score",
                f"median time of POST /anomaly, {args.rows:,} records (ms)", "ratio to energy"],
               [[r["records"], r["searched"], r["score"], f"{1000 * r['median_seconds']:.1f}",
                 f"{r['ratio_to_energy']:.2f}"] for r in rows_out])
    worst = max(r["ratio_to_energy"] for r in rows_out)
    print(md)
    write_section("support_cost", "\n".join([
        "### Cost of the support scores in the service (`bench/support_cost.py`)",
        "",
        f"Machine: {machine_line(info)}. Regenerate: `{data['command']}`. A real uvicorn server "
        f"on loopback (OMP_NUM_THREADS={env['OMP_NUM_THREADS']}) serving a kddcup99 bundle "
        f"(reference set {ref.shape[0]:,} rows × {ref.shape[1]} columns, float32); POST "
        f"/anomaly with the same {args.rows:,} KDD records per call, the three scores "
        f"alternated within each of {args.repeats} repeats; medians. Two sets of records: "
        "rows drawn from the whole file (mostly attack traffic, which repeats, so many equal "
        "a reference row and skip the search) and `normal.` rows, which this recipe never "
        "trains on, so nearly every one is searched: the worst case.",
        "",
        md,
        "",
        f"Goal (every score ≤ 2× the energy's time): **{'met' if worst <= 2.0 else 'not met'}** "
        f"(worst ratio {worst:.2f}).",
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
