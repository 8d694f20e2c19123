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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine_info, machine_line, save_json, table, write_section  # noqa: E402

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
    p.add_argument("--render", action="store_true",
                   help="only rewrite the docs section from bench/results/recipes.json")
    args = p.parse_args()
    if args.render:
        saved = json.loads((RESULTS / "recipes.json").read_text())
        only = saved.get("only") or ",".join(dict.fromkeys(r["recipe"] for r in saved["results"]))
        seeds = saved.get("seeds") or ",".join(str(s) for s in dict.fromkeys(r["seed"] for r in saved["results"]))
        write_recipes(saved["machine"], saved["results"], only, seeds)
        print("updated docs/benchmarks.md (recipes)")
        return
    info = machine_info()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.only.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                print(f"training {recipe} seed {seed} ...", flush=True)
                r = run(recipe, seed, Path(tmp))
                print(f"  {r['wall_seconds']} s  {json.dumps({k: r['metrics'].get(k) for k in METRICS.get(recipe, [])})}", flush=True)
                results.append(r)
    save_json("recipes", {"machine": info, "results": results, "only": args.only, "seeds": args.seeds})
    write_recipes(info, results, args.only, args.seeds)


def write_recipes(info: dict[str, Any], results: list[dict[str, Any]], only: str, seeds: str) -> None:
    """The docs section from measured rows, marked against today's recipe step counts."""
    write_section("recipes", section(info, results, f"--only {only} --seeds {seeds}", recipe_steps(results)))


def recipe_steps(results: list[dict[str, Any]]) -> dict[str, int]:
    """Each measured recipe's step count as its file says today."""
    from training.config import load_recipe

    return {r["recipe"]: load_recipe(r["recipe"]).train.steps for r in results}


def section(info: dict[str, Any], results: list[dict[str, Any]], args: str, steps_now: dict[str, int]) -> str:
    """The `recipes` section; a row whose recipe has since changed its step count says so,
    since its figures then describe an older recipe."""
    rows, stale = [], set()
    for r in results:
        m = r["metrics"]
        shown = ", ".join(f"{k} {m[k]:.3f}" if isinstance(m.get(k), float) else f"{k} {m.get(k)}"
                          for k in METRICS.get(r["recipe"], []) if k in m)
        now = steps_now.get(r["recipe"], r["steps"])
        if now != r["steps"]:
            stale.add(r["recipe"])
            shown += f" (older recipe: it now trains {now} steps)"
        rows.append([f"`{r['command']}`", r["steps"], r["wall_seconds"], shown])
    md = ["## Training recipes (the training issue's targets)", "",
          f"Machine: {machine_line(info)}. Regenerate: `.venv/bin/python bench/recipes.py {args}`.", "",
          table(["command", "steps", "wall time (s)", "final metrics"], rows)]
    if stale:
        md += ["", f"Rows of {', '.join(sorted(stale))} were measured before the recipe changed its step "
               "count (`bench/recipes.py --render` marks them); rerun the command above for current figures."]
    return "\n".join(md)


if __name__ == "__main__":
    main()
