"""`meg eval BUNDLE`: re-run the recipe's evaluation on the exported ONNX networks, so
the figures describe exactly what the service will run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meg import bundle as B
from training.config import RecipeConfig
from training.evaluate import evaluate
from training.train import load_data


def evaluate_bundle(bundle_dir: Path, seed: int = 12345) -> dict[str, Any]:
    import onnxruntime as ort

    manifest = B.read_manifest(bundle_dir)
    cfg = RecipeConfig.from_dict(manifest.config)
    data = load_data(cfg.data, cfg.calibrate)
    if data.dim != manifest.data.dim:
        raise B.BundleError(
            f"{bundle_dir}: bundle expects {manifest.data.dim} features, the data has {data.dim}"
        )
    opts = ["CPUExecutionProvider"]
    energy = ort.InferenceSession(str(Path(bundle_dir) / B.ENERGY_ONNX), providers=opts)
    gen = ort.InferenceSession(str(Path(bundle_dir) / B.GENERATOR_ONNX), providers=opts)

    def energy_np(x: np.ndarray) -> np.ndarray:
        out = [energy.run(None, {"x": x[i : i + 8192].astype(np.float32)})[0]
               for i in range(0, len(x), 8192)]
        return np.concatenate(out)

    def sample_np(n: int) -> np.ndarray:
        z = np.random.default_rng(seed).standard_normal((n, manifest.latent_dim)).astype(np.float32)
        return gen.run(None, {"z": z})[0]

    # The calibrated flags against the bundle's own calibration scores: what the service does.
    cal = manifest.calibration
    return {"model": manifest.name, "version": manifest.version,
            "metrics": evaluate(data, energy_np, sample_np, calibration_scores=cal.array,
                                target_fpr=cal.target_fpr)}
