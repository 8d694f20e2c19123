"""Shared by the benchmark scripts: machine facts, result files, and the generated
sections of docs/benchmarks.md (each script rewrites only its own section)."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def machine_info() -> dict[str, Any]:
    import torch

    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:  # training-only environments
        ort_version = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    return (f"{info['cpu']} ({info['cpu_count']} cores){gpu}; Python {info['python']}, "
            f"torch {info['torch']}, onnxruntime {info['onnxruntime']}; {info['date']}")


def save_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def write_section(name: str, markdown: str) -> None:
    """Replace the section between `<!-- BEGIN name -->` and `<!-- END name -->` in
    docs/benchmarks.md (appending it when absent)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def run_line(data: dict[str, Any], wall_minutes: float) -> str:
    """The machine, rerun command, wall time, load average and any note of a saved run, as
    one sentence for the docs (the benches that record `load_average_1_5_15min`)."""
    info, load = data["machine"], data.get("load_average_1_5_15min")
    contention = (f" Load average (1/5/15 min) at start {', '.join(f'{x:.1f}' for x in load['start'])}, "
                  f"at end {', '.join(f'{x:.1f}' for x in load['end'])} on {info['cpu_count']} cores: "
                  "the machine is shared, so wall times include contention." if load else "")
    note = f" {data['note']}" if data.get("note") else ""
    return (f"Machine: {machine_line(info)}; torch threads {info['torch_threads']}. "
            f"Regenerate: `{data['command']}` (total wall time {wall_minutes:.1f} min).{contention}{note}")


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Lay out, write and close a matplotlib figure (creating its folder)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def start_run(script: str, threads: int, argv: list[str]) -> tuple[dict[str, Any], str]:
    """Set torch's thread count (0: leave it), print the machine line, and return the
    machine facts and the command line that reruns this benchmark."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    print(f"machine: {machine_line(info)}; torch threads {info['torch_threads']}", flush=True)
    return info, rerun_command(script, argv)


def rerun_command(script: str, argv: list[str]) -> str:
    """The shell command that reruns `script` with `argv`, quoted; `--note` is left out
    (a note describes one run, and the docs print it beside the command)."""
    import shlex

    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            kept.append(arg)
    return f"MEG_DATA_DIR=... .venv/bin/python bench/{script} " + shlex.join(kept)


def train_recipe(recipe: str, dataset: Any, sets: list[str], seed: int,
                 metrics: tuple[str, ...], keep_test_scores: bool = False,
                 keep_model: bool = False) -> dict[str, Any]:
    """Train `recipe` in this process on a preloaded `dataset` with `--set` overrides
    `sets` and `seed`, as `meg train` would; return the steps, the chosen final metrics,
    the wall time and the equivalent `meg train` command (and, with `keep_test_scores`,
    the energies of `dataset.test_x` under "test_scores": a numpy array, not for JSON;
    with `keep_model`, the trained `training.model.MEG` under "model")."""
    import tempfile

    from training.config import apply_overrides, load_recipe
    from training.train import train

    cfg = apply_overrides(load_recipe(recipe), [*sets, f"train.seed={seed}"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = train(cfg, None, Path(tmp), progress=False, dataset=dataset)
    wall = time.perf_counter() - t0
    shown = " ".join(f"--set {s}" for s in sets)
    out = {"seed": seed, "steps": res.steps, "metrics": {k: res.metrics[k] for k in metrics},
           "wall_seconds": round(wall, 2), "command": f"meg train {recipe} --seed {seed} {shown}"}
    if keep_test_scores:
        from training.evaluate import batched

        device = next(res.model.energy.parameters()).device
        out["test_scores"] = batched(res.model.energy, dataset.test_x, device)
    if keep_model:
        out["model"] = res.model
    return out


def realized_fpr(cal_scores: np.ndarray, test_scores: np.ndarray, test_y: np.ndarray,
                 alphas: tuple[float, ...] = (0.01, 0.05)) -> dict[str, float]:
    """Share of the test set's normal rows (`fpr@α`) and of its anomalies (`tpr@α`, the
    power) whose conformal p-value against `cal_scores` (held-out normal rows) is <= α."""
    from meg.scoring import conformal_pvalues

    p = conformal_pvalues(cal_scores, test_scores)
    y = np.asarray(test_y)
    out: dict[str, float] = {}
    for a in alphas:
        out[f"fpr@{a:g}"] = float((p[y == 0] <= a).mean())
        out[f"tpr@{a:g}"] = float((p[y == 1] <= a).mean())
    return out


# Score variants of meg.support, in the input space and in the encoder's latent space.
SUPPORT_VARIANTS = ("energy", "knn", "energy+knn", "knn-latent", "energy+knn-latent")
# An ablation `support_scores` also returns: energy+knn with equal weights (Fisher's
# combination, the energy's weight forced to 1), on the same ECDFs.
EQUAL_WEIGHTS = "energy+knn-equal"


@dataclass
class SupportScores:
    """Every `SUPPORT_VARIANTS` score (and `EQUAL_WEIGHTS`) of each named row set, and
    what it took."""

    scores: dict[str, dict[str, np.ndarray]]  # variant -> row set name -> (N,) float64
    reference_rows: dict[str, int]  # space -> rows in the reference set
    seconds: dict[str, float]  # "energy", "input", "latent": fit + scoring wall time
    energy_weight: dict[str, float] = field(default_factory=dict)  # space -> the combination's


def support_scores(model: Any, train: np.ndarray, rows: dict[str, np.ndarray],
                   cap: int | None = None) -> SupportScores:
    """Score `rows` (name -> model-space rows) with every score variant of a trained MEG
    `model`: the reference set and the combination's ECDFs from `train` (the rows it
    was trained on; meg.support.fit_support), so that every held-out row is free to
    calibrate. The latent variants search the encoder's codes instead of the rows."""
    import torch

    from meg.support import REFERENCE_CAP, fit_support
    from training.evaluate import batched

    cap = REFERENCE_CAP if cap is None else cap
    device = next(model.energy.parameters()).device
    t0 = time.perf_counter()
    energy = {k: batched(model.energy, v, device).astype(np.float64) for k, v in rows.items()}
    out: dict[str, dict[str, np.ndarray]] = {"energy": energy}
    seconds = {"energy": time.perf_counter() - t0}
    refs: dict[str, int] = {}
    weights: dict[str, float] = {}

    def energy_of(x: np.ndarray) -> np.ndarray:
        return batched(model.energy, x, device).astype(np.float64)

    def encode(x: np.ndarray) -> np.ndarray:
        return batched(model.encoder, x, device)

    def same(x: np.ndarray) -> np.ndarray:
        return x

    for space, suffix, f in (("input", "", same), ("latent", "-latent", encode)):
        t1 = time.perf_counter()
        with torch.no_grad():
            # the ECDF fit scores training rows' energies; in latent space through the
            # codes, so fit on the codes with the energies of the rows they encode
            x_train = f(train)
            by_code = {c.tobytes(): i for i, c in enumerate(np.asarray(x_train, np.float32))}

            def fit_energy(codes: np.ndarray, x_train: np.ndarray = x_train,
                           by_code: dict[bytes, int] = by_code) -> np.ndarray:
                idx = [by_code[c.tobytes()] for c in np.asarray(codes, np.float32)]
                return energy_of(train[idx])

            sm = fit_support(x_train, fit_energy, cap=cap)
            dist = {k: sm.distance(f(v)) for k, v in rows.items()}
        out["knn" + suffix] = dist
        out["energy+knn" + suffix] = {k: sm.combine(energy[k], dist[k]) for k in rows}
        if space == "input":
            out[EQUAL_WEIGHTS] = {k: sm.energy_ecdf.surprise(energy[k])
                                  + sm.knn_ecdf.surprise(dist[k]) for k in rows}
        weights[space] = round(sm.energy_weight, 4)
        refs[space] = int(len(sm.reference))
        seconds[space] = time.perf_counter() - t1
    return SupportScores(out, refs, {k: round(v, 2) for k, v in seconds.items()}, weights)
