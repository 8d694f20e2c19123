"""Train recipes exactly as a user would (`meg train RECIPE` in a fresh process) and
record wall time and final metrics: the figures the training issue promises.

    .venv/bin/python bench/recipes.py [--only kddcup99,25gaussians] [--seeds 0]

Writes bench/results/recipes.json and the `recipes` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_info, machine_line, save_json, table, write_section  # noqa: E402

METRICS = {
    "kddcup99": ["precision", "recall", "f1", "auroc"],
    "25gaussians": ["modes_covered", "high_quality_fraction", "kl_modes_uniform",
                    "mala_modes_covered", "mala_high_quality_fraction"],
    "8gaussians": ["modes_covered", "high_quality_fraction", "kl_modes_uniform"],
    "digits": ["auroc", "auprc"],
    "mnist": ["auroc", "auprc"],
}


def run(recipe: str, seed: int, workdir: Path) -> dict:
    meg = Path(sys.executable).with_name("meg")
    cmd = [str(meg), "train", recipe, "--seed", str(seed), "--quiet",
           "--out", str(workdir / "models" / f"{recipe}-s{seed}"), "--run-dir", str(workdir / "runs" / f"{recipe}-s{seed}")]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"recipe": recipe, "seed": seed, "wall_seconds": round(wall, 1), "steps": out["steps"],
            "metrics": out["metrics"], "command": f"meg train {recipe} --seed {seed}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="kddcup99,25gaussians", help="comma-separated recipes")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    args = p.parse_args()
    info = machine_info()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.only.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                print(f"training {recipe} seed {seed} ...", flush=True)
                r = run(recipe, seed, Path(tmp))
                print(f"  {r['wall_seconds']} s  {json.dumps({k: r['metrics'].get(k) for k in METRICS.get(recipe, [])})}", flush=True)
                results.append(r)
    save_json("recipes", {"machine": info, "results": results})
    rows = []
    for r in results:
        m = r["metrics"]
        shown = ", ".join(f"{k} {m[k]:.3f}" if isinstance(m.get(k), float) else f"{k} {m.get(k)}"
                          for k in METRICS.get(r["recipe"], []) if k in m)
        rows.append([f"`{r['command']}`", r["steps"], r["wall_seconds"], shown])
    write_section("recipes", "\n".join([
        "## Training recipes (the training issue's targets)",
        "",
        f"Machine: {machine_line(info)}. Regenerate: `.venv/bin/python bench/recipes.py "
        f"--only {args.only} --seeds {args.seeds}`.",
        "",
        table(["command", "steps", "wall time (s)", "final metrics"], rows),
    ]))


if __name__ == "__main__":
    main()
