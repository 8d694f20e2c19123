"""Bundle round trip: export, then load in a fresh process that never imports training;
ONNX and the torch networks rebuilt from the manifest's architecture and the safetensors
weights agree; tampering and missing files are caught by name."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meg import bundle as B

ROOT = Path(__file__).resolve().parents[2]

LOADER = r"""
import json, sys
import numpy as np, onnxruntime as ort, torch
from safetensors.torch import load_file
from meg import bundle as B
from meg.networks import build_bundled
d = sys.argv[1]
m = B.read_manifest(d)
rng = np.random.default_rng(0)
z = rng.standard_normal((5, m.latent_dim)).astype(np.float32)
x = rng.standard_normal((5, m.data.dim)).astype(np.float32)
sess = {f: ort.InferenceSession(f"{d}/{f}", providers=["CPUExecutionProvider"])
        for f in (B.GENERATOR_ONNX, B.ENERGY_ONNX, B.ENCODER_ONNX)}
nets = build_bundled(m.architecture, load_file(f"{d}/{B.WEIGHTS}"))
gen, energy, enc = nets.generator.eval(), nets.energy.eval(), nets.encoder.eval()
g_onnx = sess[B.GENERATOR_ONNX].run(None, {"z": z})[0]
e_onnx = sess[B.ENERGY_ONNX].run(None, {"x": x})[0]
z_onnx = sess[B.ENCODER_ONNX].run(None, {"x": x})[0]
xt = torch.from_numpy(x).requires_grad_(True)
e_t = energy(xt)
(grad,) = torch.autograd.grad(e_t.sum(), xt)  # differentiable without training code
one = energy(torch.from_numpy(x[:1]))
print(json.dumps({
    "gen_err": float(np.abs(gen(torch.from_numpy(z)).detach().numpy() - g_onnx).max()),
    "energy_err": float(np.abs(e_t.detach().numpy() - e_onnx).max()),
    "enc_err": float(np.abs(enc(torch.from_numpy(x)).detach().numpy() - z_onnx).max()),
    "shapes": [list(g_onnx.shape), list(e_onnx.shape), list(z_onnx.shape), list(one.shape)],
    "grad_finite": bool(torch.isfinite(grad).all()),
    "training_imported": any(k == "training" or k.startswith("training.") for k in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def bundles(tiny_models_dir):
    return tiny_models_dir


@pytest.mark.parametrize("name", ["toy", "events", "digits"])
def test_round_trip_in_a_fresh_process(bundles, name):
    d = bundles / name
    proc = subprocess.run([sys.executable, "-c", LOADER, str(d)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    m = B.read_manifest(d)
    assert out["training_imported"] is False
    assert out["gen_err"] <= 1e-4 and out["energy_err"] <= 1e-4 and out["enc_err"] <= 1e-4
    assert out["shapes"] == [[5, m.data.dim], [5], [5, m.latent_dim], [1]]
    assert out["grad_finite"]


def test_manifest_contents(bundles):
    m = B.read_manifest(bundles / "events")
    raw = json.loads((bundles / "events" / B.MANIFEST).read_text())
    assert raw["schema_version"] == B.SCHEMA_VERSION and m.name == "events"
    assert set(B.REQUIRED_FILES) | {B.PREVIEW_PNG} <= set(m.files)
    assert not [f for f in m.files if f.endswith((".pt2", ".pt", ".pkl"))]
    assert raw["architecture"]["latent_dim"] == m.latent_dim == raw["latent_dim"]
    assert raw["architecture"]["data_shape"] == m.data.shape
    assert raw["architecture"]["g_hidden"] == raw["config"]["model"]["g_hidden"]
    assert m.version == B.content_version(m.files, m.config)
    assert m.metrics["onnx_max_abs_error"] <= 1e-4
    assert m.data.feature_names == m.preprocessing.column_names()
    assert m.calibration.n > 0 and m.calibration.scores == sorted(m.calibration.scores)
    assert m.config["data"]["source"] == "tabular"
    rows = m.preprocessing.transform_records([{"bytes": 100.0, "duration": 1.5, "protocol": "udp"}])
    assert rows.shape == (1, m.data.dim) and rows[0, -1] == 1.0
    assert (bundles / "digits" / B.PREVIEW_PNG).read_bytes()[:4] == b"\x89PNG"


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_file_is_named(bundles, tmp_path):
    d = _copy(bundles / "toy", tmp_path / "toy")
    with open(d / B.ENERGY_ONNX, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(B.BundleError, match="energy.onnx: checksum mismatch"):
        B.read_manifest(d)


def test_missing_file_and_bad_schema_are_named(bundles, tmp_path):
    d = _copy(bundles / "toy", tmp_path / "toy")
    (d / B.WEIGHTS).unlink()
    with pytest.raises(B.BundleError, match="weights.safetensors: missing"):
        B.read_manifest(d)
    raw = json.loads((d / B.MANIFEST).read_text())
    raw["schema_version"] = 99
    (d / B.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(B.BundleError, match="schema_version 99 is not supported"):
        B.read_manifest(d)
    with pytest.raises(B.BundleError, match="no manifest.json"):
        B.read_manifest(tmp_path)


def test_calibration_set_round_trip(bundles, tmp_path):
    """The bundle keeps every calibration score: the ONNX energies of the dataset's
    held-out training-class rows, sorted, exactly; the JSON trip loses nothing; a
    manifest without scores (or unsorted ones) is refused by name."""
    import onnxruntime as ort

    from training.config import RecipeConfig
    from training.train import load_data

    d = bundles / "events"
    m = B.read_manifest(d)
    cfg = RecipeConfig.from_dict(m.config)
    data = load_data(cfg.data, cfg.calibrate)
    sess = ort.InferenceSession(str(d / B.ENERGY_ONNX), providers=["CPUExecutionProvider"])
    want = np.sort(sess.run(None, {"x": data.val})[0]).astype(np.float64)
    assert m.calibration.n == len(data.val) > 0
    np.testing.assert_array_equal(m.calibration.array, want)
    assert m.calibration.target_fpr == cfg.calibrate.target_fpr and m.calibration.score == "energy"
    again = B.Calibration.from_json(json.loads(json.dumps(m.calibration.to_json())))
    assert again == m.calibration

    raw = json.loads((d / B.MANIFEST).read_text())
    for bad, match in (({"percentiles": [0, 100], "values": [0, 1], "n": 2,
                         "contamination": 0.1}, "export it again"),
                       ({**raw["calibration"], "scores": [2.0, 1.0]}, "sorted"),
                       ({**raw["calibration"], "target_fpr": 0.0}, "target_fpr")):
        c = _copy(d, tmp_path / f"c{len(list(tmp_path.iterdir()))}")
        (c / B.MANIFEST).write_text(json.dumps({**raw, "calibration": bad}))
        with pytest.raises(B.BundleError, match=match):
            B.read_manifest(c, verify=False)


def test_support_calibration_round_trip(bundles, tmp_path):
    """The support scores' calibration holds EVERY held-out row (none is spent fitting
    the combination, which reads the training rows only), and the loaded bundle's
    SupportModel reproduces each stored score from those rows; an entry written before
    `ecdf_rows` existed (half-and-half) still loads, as such."""
    import onnxruntime as ort

    from meg.support import ECDF_HELD_OUT_HALF, ECDF_TRAINING, load_reference
    from training.config import RecipeConfig
    from training.train import load_data

    d = bundles / "events"
    m = B.read_manifest(d)
    spec = m.support
    assert spec is not None and spec.ecdf_rows == ECDF_TRAINING
    assert 0.0 <= spec.energy_weight <= 1.0
    cfg = RecipeConfig.from_dict(m.config)
    data = load_data(cfg.data, cfg.calibrate)
    sess = ort.InferenceSession(str(d / B.ENERGY_ONNX), providers=["CPUExecutionProvider"])
    energy = sess.run(None, {"x": data.val})[0].astype(np.float64)
    model = spec.model(load_reference(d / spec.reference, m.data.dim))
    for variant in ("knn", "energy+knn"):
        assert len(spec.calibration[variant]) == len(data.val) == m.calibration.n
        np.testing.assert_allclose(spec.calibration[variant],
                                   np.sort(model.score(variant, energy, data.val)),
                                   rtol=1e-9, atol=1e-9)
    # every reference row is a training row, none a calibration row
    train_rows = {r.tobytes() for r in data.train.astype(np.float32)}
    assert all(r.tobytes() in train_rows for r in model.reference)
    raw = json.loads((d / B.MANIFEST).read_text())
    old = {k: v for k, v in raw["support"].items() if k not in ("ecdf_rows", "energy_weight")}
    c = _copy(d, tmp_path / "old")
    (c / B.MANIFEST).write_text(json.dumps({**raw, "support": old}))
    back = B.read_manifest(c, verify=False).support
    assert back is not None and back.ecdf_rows == ECDF_HELD_OUT_HALF
    assert back.energy_weight == 1.0


def test_export_replaces_a_bundle_atomically(bundles, tmp_path):
    """Re-exporting over an existing bundle leaves a complete bundle and no temp dirs."""
    import shutil

    from megtest import train_tiny

    out = tmp_path / "models" / "toy"
    train_tiny("25gaussians", out, ["data.n=500", "train.steps=2"])
    first = B.read_manifest(out).version
    shutil.rmtree(tmp_path / "runs")  # a fresh run (a run dir holding a checkpoint is kept)
    train_tiny("25gaussians", out, ["data.n=500", "train.steps=3"])
    assert B.read_manifest(out).version != first
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]
