"""`meg`: train, evaluate, inspect and serve MEG models.

    meg train RECIPE [--set section.key=value ...] --out DIR
    meg eval BUNDLE
    meg info BUNDLE
    meg recipes
    meg serve [--models DIR] [--host HOST] [--port PORT]
    meg score FILE [--model NAME] (--url URL | --bundle PATH) [--out FILE] [--chunk-size N]
              [--no-header]

Subcommands import what they need lazily: `meg serve` never imports training code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from training.config import apply_overrides, load_recipe
    from training.train import train

    cfg = load_recipe(args.recipe)
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.threads is not None:
        overrides.append(f"train.num_threads={args.threads}")
    cfg = apply_overrides(cfg, overrides)
    out = Path(args.out) if args.out else Path("models") / cfg.name
    run_dir = Path(args.run_dir) if args.run_dir else None  # None: a fresh runs/NAME/<time>-<id>
    result = train(cfg, out, run_dir, resume=args.resume, progress=not args.quiet)
    if result.metrics:
        print(json.dumps({"bundle": str(result.bundle_dir), "run_dir": str(result.run_dir),
                          "steps": result.steps, "seconds": round(result.seconds, 1),
                          "metrics": result.metrics}, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from training.bundle_eval import evaluate_bundle

    print(json.dumps(evaluate_bundle(Path(args.bundle)), indent=2))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from meg.bundle import read_manifest

    m = read_manifest(Path(args.bundle))
    info = m.to_json()
    if not args.full:
        info.pop("config")
        cal = info.pop("calibration")
        info["calibration"] = {k: cal[k] for k in ("score", "n", "target_fpr", "source")}
        pre = info.pop("preprocessing")
        info["preprocessing"] = (
            {"features": len(pre["features"]), "unknown_category": pre["unknown_category"]}
            if pre else None
        )
        info["data"].pop("feature_names")
    print(json.dumps(info, indent=2))
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from training.config import RECIPES_DIR, list_recipes

    for name in list_recipes():
        first = (RECIPES_DIR / f"{name}.toml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:12s} {first}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.server import serve

    serve(models=args.models, host=args.host, port=args.port)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    import os

    from meg.bundle import MANIFEST
    from meg.client import Client, MegClientError
    from meg.score_file import BundleScorer, ScoreError, ServerScorer, score_file

    if (args.url is None) == (args.bundle is None):
        raise ScoreError("give exactly one of --url (a server) or --bundle (in-process)")
    src, out = Path(args.file), Path(args.out) if args.out else None
    opts = {"out": out, "chunk_size": args.chunk_size, "keep": args.keep,
            "progress": not args.quiet, "header": not args.no_header}
    if args.url is not None:
        if not args.model:
            raise ScoreError("--model NAME is required with --url")
        key = args.api_key or os.environ.get("MEG_API_KEY")
        try:
            with Client(args.url, api_key=key) as client:
                scorer = ServerScorer(client, args.model, args.threshold, args.target_fpr,
                                      score=args.score)
                summary = score_file(src, scorer, **opts)
        except MegClientError as e:
            raise ScoreError(str(e)) from None
    else:
        bundle = Path(args.bundle)
        if not (bundle / MANIFEST).exists() and args.model:
            bundle = bundle / args.model  # --bundle MODELS_DIR --model NAME
        with BundleScorer(bundle, args.threshold, args.target_fpr, args.score) as local:
            summary = score_file(src, local, **opts)
    print(f"meg score: {summary.rows} rows, {summary.flagged} flagged"
          + (f" -> {out}" if out else ""), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meg", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe and export a bundle",
                       description="Train a recipe (see `meg recipes`) and export a model bundle.")
    t.add_argument("recipe", help="built-in recipe name (25gaussians, digits, kddcup99, ...) or a .toml path")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=500 (repeatable)")
    t.add_argument("--out", help="bundle directory; its name is the model name (default models/RECIPE)")
    t.add_argument("--run-dir", help="checkpoints, TensorBoard, previews, metrics.json (default: a "
                   "fresh runs/NAME/<UTC time>-<id>); one holding a checkpoint needs --resume")
    t.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR/checkpoint.pt (same config; train.steps may grow)")
    t.add_argument("--seed", type=int, help="random seed (same seed, same run)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (CUDA when present)")
    t.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (train.num_threads); default 0 = auto: the CPUs this "
                   "process may use (cgroup quota, affinity, OMP_NUM_THREADS) less the load")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a bundle on its recipe's test data",
                       description="Re-run the recipe's evaluation on an exported bundle (ONNX).")
    e.add_argument("bundle", help="bundle directory")
    e.set_defaults(fn=_cmd_eval)

    i = sub.add_parser("info", help="verify a bundle and print its manifest")
    i.add_argument("bundle", help="bundle directory")
    i.add_argument("--full", action="store_true", help="include config, calibration and preprocessing")
    i.set_defaults(fn=_cmd_info)

    r = sub.add_parser("recipes", help="list the built-in recipes")
    r.set_defaults(fn=_cmd_recipes)

    s = sub.add_parser("serve", help="serve bundles over HTTP (FastAPI + uvicorn)")
    s.add_argument("--models", help="directory of bundles (default: $MEG_MODELS_DIR or ./models)")
    s.add_argument("--host", default=None, help="default 127.0.0.1 ($MEG_HOST)")
    s.add_argument("--port", type=int, default=None, help="default 8000 ($MEG_PORT)")
    s.set_defaults(fn=_cmd_serve)

    sc = sub.add_parser(
        "score", help="anomaly scores for every row of a CSV or Parquet file",
        description="Score a CSV/Parquet file in chunks (files larger than memory work) "
        "through a server (--url) or in-process from a bundle (--bundle). Output: row, any "
        "--keep columns, score, p_value, percentile, is_anomaly; CSV (Parquet when --out "
        "ends in .parquet).")
    sc.add_argument("file", help="input .csv or .parquet")
    sc.add_argument("--model", help="model name (required with --url; with --bundle DIR of "
                    "bundles, the bundle DIR/NAME)")
    sc.add_argument("--url", help="server base URL, e.g. http://127.0.0.1:8000 (API key: "
                    "--api-key or $MEG_API_KEY)")
    sc.add_argument("--bundle", help="bundle directory (or a directory of bundles with --model)")
    sc.add_argument("--out", help="output file (default: CSV on stdout)")
    sc.add_argument("--chunk-size", type=int, default=1000, metavar="N",
                    help="rows read and scored at a time (default 1000); with --url sent in "
                    "requests of at most 1000 rows")
    sc.add_argument("--no-header", action="store_true",
                    help="the CSV has no header row: its first columns are the model's input "
                    "features in order (further ones are named column<i>, for --keep), as "
                    "in the raw KDDCUP99 file")
    sc.add_argument("--keep", action="append", metavar="COLUMN",
                    help="copy this input column into the output, e.g. an id (repeatable)")
    flag = sc.add_mutually_exclusive_group()
    flag.add_argument("--target-fpr", type=float, help="flag p_value <= this (default: the "
                      "bundle's target false-positive rate)")
    flag.add_argument("--threshold", type=float, help="flag score >= this instead")
    sc.add_argument("--score", choices=["energy", "knn", "energy+knn"],
                    help="which score (default: the bundle's default score)")
    sc.add_argument("--api-key", help="API key for --url (default $MEG_API_KEY)")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    sc.set_defaults(fn=_cmd_score)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from meg.bundle import BundleError
    from training.config import ConfigError
    from training.data.files import DataError

    try:
        return int(args.fn(args))
    except (ConfigError, BundleError, DataError, FileNotFoundError, ValueError) as e:
        print(f"meg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
