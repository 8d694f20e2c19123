"""A bundle cannot run code (issue 11): real pickle payloads planted where a loader might
unpickle them are refused, and the file their payload would create never appears."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meg import bundle as B
from service.engine.models import load_model
from service.main import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this creates `marker`: what an attacker's `os.system` would do, made
    observable."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def payload_bytes(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The planted bytes really run code when unpickled (else the tests below prove nothing)."""
    marker = tmp_path / "proof"
    pickle.loads(payload_bytes(marker))  # noqa: S301 - the point of the test
    assert marker.exists()


def _copy(models: Path, name: str, dst: Path) -> Path:
    shutil.copytree(models / name, dst / name)
    return dst / name


def _rewrite(bundle: Path, **changes: Any) -> dict[str, Any]:
    raw = json.loads((bundle / B.MANIFEST).read_text())
    raw.update(changes)
    (bundle / B.MANIFEST).write_text(json.dumps(raw, indent=2))
    return raw


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(models: Path, **kw: Any) -> Settings:
    return Settings(models_dir=models, log_level="WARNING", inference_workers=1, **kw)


def _v1_bundle_with_pt2_payload(models: Path, tmp: Path, marker: Path) -> Path:
    """A schema-1 bundle whose .pt2 programs are pickle payloads with matching sha256s."""
    d = _copy(models, "toy", tmp)
    files = json.loads((d / B.MANIFEST).read_text())["files"]
    for name in ("generator.pt2", "energy.pt2"):
        (d / name).write_bytes(payload_bytes(marker))
        files[name] = _sha(d / name)
    (d / B.WEIGHTS).unlink()
    files.pop(B.WEIGHTS)
    _rewrite(d, schema_version=1, files=files)
    return d


def test_v1_bundle_with_pt2_payload_is_refused(tiny_models_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    d = _v1_bundle_with_pt2_payload(tiny_models_dir, tmp_path / "models", marker)
    with pytest.raises(B.BundleError, match=r"manifest\.json: schema_version 1 .*re-export"):
        B.read_manifest(d)
    with pytest.raises(B.BundleError, match=r"manifest\.json: schema_version 1"):
        load_model(d, _settings(d.parent))
    assert not marker.exists()


def test_payload_in_place_of_the_weights_is_refused(tiny_models_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    d = _copy(tiny_models_dir, "toy", tmp_path / "models")
    (d / B.WEIGHTS).write_bytes(payload_bytes(marker))
    files = json.loads((d / B.MANIFEST).read_text())["files"]
    _rewrite(d, files={**files, B.WEIGHTS: _sha(d / B.WEIGHTS)})  # checksum "fixed" too
    B.read_manifest(d)  # the checksums agree: only the loader stands in the way
    with pytest.raises(B.BundleError, match=r"weights\.safetensors: not a readable safetensors"):
        load_model(d, _settings(d.parent))
    assert not marker.exists()


def test_server_refuses_planted_bundles_and_serves_the_rest(tiny_models_dir: Path,
                                                            tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root = tmp_path / "models"
    _copy(tiny_models_dir, "toy", root)
    _v1_bundle_with_pt2_payload(tiny_models_dir, tmp_path / "v1", marker)
    shutil.move(tmp_path / "v1" / "toy", root / "legacy")
    d = _copy(tiny_models_dir, "events", root)
    (d / B.WEIGHTS).write_bytes(payload_bytes(marker))
    files = json.loads((d / B.MANIFEST).read_text())["files"]
    _rewrite(d, files={**files, B.WEIGHTS: _sha(d / B.WEIGHTS)})
    # A payload listed as an extra file of a valid bundle: checksummed, never opened.
    d = _copy(tiny_models_dir, "digits", root)
    (d / "extra.pt2").write_bytes(payload_bytes(marker))
    files = json.loads((d / B.MANIFEST).read_text())["files"]
    _rewrite(d, files={**files, "extra.pt2": _sha(d / "extra.pt2")})

    with TestClient(create_app(_settings(root))) as c:
        listing = c.get("/models").json()
        assert sorted(m["name"] for m in listing["models"]) == ["digits", "toy"]
        failed = listing["failed"]
        assert set(failed) == {"legacy", "events"}
        assert "legacy/manifest.json" in failed["legacy"] and "re-export" in failed["legacy"]
        assert "events/weights.safetensors" in failed["events"]
        assert c.post("/sample", json={"model": "digits", "n": 2, "seed": 0}).status_code == 200
    assert not marker.exists()


def test_no_unpickling_loader_in_meg_or_service() -> None:
    """The loaders that run code on load are absent from the shared and service code."""
    pattern = re.compile(r"torch\.load\(|torch\.export\.load\(|pickle\.loads?\(|"
                         r"torch\.jit\.load\(|joblib\.load\(|dill\.load")
    hits = [f"{p.relative_to(ROOT)}:{i}" for pkg in ("meg", "service")
            for p in sorted((ROOT / pkg).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_training_checkpoints_load_weights_only() -> None:
    """Checkpoints are trusted more than bundles, but still loaded with weights_only=True."""
    calls = [(p, line) for pkg in ("training", "bench")
             for p in sorted((ROOT / pkg).rglob("*.py"))
             for line in p.read_text().splitlines() if "torch.load(" in line]
    assert calls and all("weights_only=True" in line for _, line in calls), calls


# --------------------------------------------------------------------------- signing

KEY = "operator-secret-key"


@pytest.fixture(scope="module")
def signed_toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy bundle exported with MEG_BUNDLE_KEY set."""
    from megtest import train_tiny

    out = tmp_path_factory.mktemp("signed") / "models" / "signed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(B.KEY_ENV, KEY)
        train_tiny("25gaussians", out, ["data.n=500", "train.steps=2"])
    return out


def test_export_signs_the_manifest_when_the_key_is_set(signed_toy: Path) -> None:
    raw = json.loads((signed_toy / B.MANIFEST).read_text())
    assert raw["signature"]["alg"] == "hmac-sha256"
    assert raw["signature"]["value"] == B.manifest_signature(raw, KEY.encode())
    assert B.read_manifest(signed_toy, key=KEY.encode()).name == "signed"
    B.read_manifest(signed_toy)  # a server without a key reads it too
    with pytest.raises(B.BundleError, match=r"manifest\.json: signature does not match"):
        B.read_manifest(signed_toy, key=b"another key")


def test_unsigned_export_has_no_signature(tiny_models_dir: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv(B.KEY_ENV, raising=False)
    assert "signature" not in json.loads((tiny_models_dir / "toy" / B.MANIFEST).read_text())
    with pytest.raises(B.BundleError, match=r"toy/manifest\.json: unsigned manifest"):
        B.read_manifest(tiny_models_dir / "toy", key=KEY.encode())


def test_server_with_a_key_loads_only_correctly_signed_bundles(
        signed_toy: Path, tiny_models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(signed_toy, root / "signed")
    _copy(tiny_models_dir, "toy", root).rename(root / "unsigned")
    # Tampered after signing: a manifest field edited, the signature kept.
    d = root / "tampered"
    shutil.copytree(signed_toy, d)
    raw = json.loads((d / B.MANIFEST).read_text())
    raw["metrics"]["modes_covered"] = 25
    (d / B.MANIFEST).write_text(json.dumps(raw))
    # A file swapped and its sha256 "fixed up" in the manifest: the signature covers it.
    d = root / "swapped"
    shutil.copytree(signed_toy, d)
    marker = tmp_path / "pwned"
    (d / B.WEIGHTS).write_bytes(payload_bytes(marker))
    raw = json.loads((d / B.MANIFEST).read_text())
    raw["files"][B.WEIGHTS] = _sha(d / B.WEIGHTS)
    (d / B.MANIFEST).write_text(json.dumps(raw))
    # Signed, but with another key.
    d = root / "foreign"
    shutil.copytree(signed_toy, d)
    B.write_manifest(d, B.read_manifest(d), key=b"someone else's key")

    with TestClient(create_app(_settings(root, bundle_key=KEY))) as c:
        listing = c.get("/models").json()
        assert [m["name"] for m in listing["models"]] == ["signed"]
        failed = listing["failed"]
        assert set(failed) == {"unsigned", "tampered", "swapped", "foreign"}
        assert all(f"{name}/manifest.json" in reason for name, reason in failed.items())
        assert "unsigned manifest" in failed["unsigned"]
        for name in ("tampered", "swapped", "foreign"):
            assert "signature does not match" in failed[name], name
        assert c.get("/models/swapped/ready").status_code == 503
        assert c.post("/sample", json={"model": "signed", "n": 2, "seed": 0}).status_code == 200
    assert not marker.exists()
    # Without a key the server does not ask for signatures (the swapped weights still fail
    # as a bundle, by name, and run nothing).
    with TestClient(create_app(_settings(root))) as c:
        listing = c.get("/models").json()
        assert sorted(m["name"] for m in listing["models"]) == ["foreign", "signed", "tampered",
                                                                 "unsigned"]
        assert "weights.safetensors" in listing["failed"]["swapped"]
    assert not marker.exists()
