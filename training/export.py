"""Export a trained model as a self-contained bundle (format: meg/bundle.py)."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from meg import bundle as B
from meg.networks import bundle_state
from meg.render import preview_png
from meg.support import DEFAULT_SCORE, SupportSpec, build_spec, save_reference
from training.config import CalibrateConfig
from training.data import Dataset, check_calibration_size
from training.model import MEG

ONNX_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    pass


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, names: tuple[str, str]) -> None:
    inp, out = names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: fast, and exact for these plain feed-forward nets.
        torch.onnx.export(
            module, (example,), str(path), input_names=[inp], output_names=[out],
            dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}}, opset_version=17, dynamo=False,
        )


def check_onnx(module: nn.Module, path: Path, in_dim: int, input_name: str, seed: int = 0) -> float:
    """Max abs error between ONNX Runtime and torch on random inputs of a few batch sizes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in (1, 7, 64):
        x = torch.randn(batch, in_dim, generator=g)
        with torch.no_grad():
            want = module(x).numpy()
        got = sess.run(None, {input_name: x.numpy()})[0]
        worst = max(worst, float(np.max(np.abs(got - want))))
    if worst > ONNX_TOLERANCE:
        raise ExportError(f"{path.name}: ONNX differs from torch by {worst:.2e} > {ONNX_TOLERANCE}")
    return worst


def _export_weights(meg: MEG, path: Path) -> None:
    """G, E and Enc tensors in one safetensors file (raw tensors, nothing that runs on load);
    the service rebuilds the networks from the manifest's architecture."""
    save_file(bundle_state(meg.modules()), str(path), metadata={"format": "pt"})


def export_bundle(
    meg: MEG,
    config: dict[str, Any],
    dataset: Dataset,
    metrics: dict[str, Any],
    out_dir: Path,
    seed: int = 0,
) -> B.Manifest:
    """Write the bundle into `out_dir` (replacing it atomically) and return its manifest.

    Files are written to a sibling temporary directory first, so a server watching the
    models directory never sees a half-written bundle."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        manifest = _write(meg, config, dataset, metrics, tmp, out_dir.name, seed)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        os.chmod(out_dir, 0o755)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def onnx_scores(energy_onnx: Path, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Energies (N,) of rows `x` through the exported ONNX energy: the network the service
    runs, so that a row scored by the service ties exactly with its calibration score."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(energy_onnx), providers=["CPUExecutionProvider"])
    name = B.ONNX_NAMES[B.ENERGY_ONNX][0]
    out = [sess.run(None, {name: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).reshape(-1) if out else np.zeros(0, dtype=np.float32)


def calibrate(energy_onnx: Path, dataset: Dataset, config: dict[str, Any]) -> B.Calibration:
    """The bundle's calibration: ONNX energies of the dataset's calibration rows (`val`:
    training-class rows training never saw, disjoint from the test rows) and the recipe's
    default target false-positive rate (config calibrate.target_fpr)."""
    target = float(config.get("calibrate", {}).get("target_fpr", CalibrateConfig.target_fpr))
    check_calibration_size(len(dataset.val), target)
    scores = onnx_scores(energy_onnx, dataset.val)
    source = (f"{len(scores)} held-out {dataset.name} rows of the training class: never "
              "trained on, disjoint from the test rows")
    return B.Calibration.from_scores(scores, target, score="energy", source=source)


def support_entry(d: Path, energy_onnx: Path, dataset: Dataset) -> SupportSpec | None:
    """meg.support's reference rows (written into `d`) and the manifest's support entry,
    for tabular and point data: the training rows, deduplicated and capped, are the
    reference and fit the combination's ECDFs; every calibration row (`val`) gives the
    support scores' own calibration, as it gives the energy's. Image bundles get none (a
    reference of image rows would outweigh the networks, and pixel distance is a poor
    support)."""
    if dataset.spec.kind == "image" or len(dataset.val) < 1:
        return None
    spec, reference = build_spec(dataset.train, dataset.val,
                                 lambda x: onnx_scores(energy_onnx, x),
                                 default_score=DEFAULT_SCORE)
    save_reference(d / spec.reference, reference)
    return spec


def _write(meg: MEG, config: dict[str, Any], dataset: Dataset, metrics: dict[str, Any],
           d: Path, name: str, seed: int) -> B.Manifest:
    gen = copy.deepcopy(meg.generator).cpu().eval()
    energy = copy.deepcopy(meg.energy).cpu().eval()
    encoder = copy.deepcopy(meg.encoder).cpu().eval()
    arch = meg.architecture
    latent_dim, data_dim = arch.latent_dim, dataset.dim
    z_ex, x_ex = torch.randn(8, latent_dim), torch.randn(8, data_dim)

    onnx_error = {}
    for module, fname, example, in_dim in (
        (gen, B.GENERATOR_ONNX, z_ex, latent_dim),
        (energy, B.ENERGY_ONNX, x_ex, data_dim),
        (encoder, B.ENCODER_ONNX, x_ex, data_dim),
    ):
        _export_onnx(module, example, d / fname, B.ONNX_NAMES[fname])
        onnx_error[fname] = check_onnx(module, d / fname, in_dim, B.ONNX_NAMES[fname][0], seed)
    _export_weights(meg, d / B.WEIGHTS)

    calibration = calibrate(d / B.ENERGY_ONNX, dataset, config)
    support = support_entry(d, d / B.ENERGY_ONNX, dataset)
    with torch.no_grad():
        z = torch.randn(256, latent_dim, generator=torch.Generator().manual_seed(seed))
        samples = gen(z).numpy()

    def energy_np(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return energy(torch.as_tensor(x, dtype=torch.float32)).numpy()

    (d / B.PREVIEW_PNG).write_bytes(preview_png(dataset.spec, samples, energy_np, dataset.val[:2000]))

    files = {p.name: B.sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}
    manifest = B.Manifest(
        name=name,
        version=B.content_version(files, config),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        recipe=str(config.get("name", "")),
        data=dataset.spec,
        latent_dim=latent_dim,
        architecture=arch,
        preprocessing=dataset.preprocessing,
        config=config,
        metrics={**metrics, "onnx_max_abs_error": max(onnx_error.values())},
        calibration=calibration,
        files=files,
        support=support,
    )
    # Signed when the operator's key is set (MEG_BUNDLE_KEY): a server holding the same
    # key then refuses any manifest changed after export, including any file's sha256.
    B.write_manifest(d, manifest, key=B.key_from_env())
    return manifest
