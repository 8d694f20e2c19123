"""The model bundle: the contract between `training` (which writes bundles) and `service`
(which loads them). Documented in docs/bundle.md; this module is its only definition.

A bundle is a directory::

    manifest.json      schema version, name, version, data, architecture, preprocessing,
                       calibration, sha256s, optional HMAC signature
    generator.onnx     z (B, latent_dim)  -> x (B, data_dim)
    energy.onnx        x (B, data_dim)    -> energy (B,)
    encoder.onnx       x (B, data_dim)    -> z (B, latent_dim)
    weights.safetensors  tensors of G, E and Enc ("generator.*", "energy.*", "encoder.*"),
                       rebuilt by meg.networks from the manifest's architecture
    preview.png        a picture of samples

Nothing in a bundle is code: ONNX is protobuf, safetensors is a JSON header plus raw
tensors, and the torch networks are rebuilt from the declared architecture. No loader
here or in the service unpickles anything.

Every tensor at the bundle boundary is flat: rows of `data_dim` floats in model space
(after preprocessing). `data.shape` says how to view one row (e.g. [1, 28, 28]).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meg.networks import Architecture, ArchitectureError
from meg.preprocessing import Preprocessing
from meg.support import SupportSpec

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
GENERATOR_ONNX = "generator.onnx"
ENERGY_ONNX = "energy.onnx"
ENCODER_ONNX = "encoder.onnx"
WEIGHTS = "weights.safetensors"
PREVIEW_PNG = "preview.png"
REQUIRED_FILES = (GENERATOR_ONNX, ENERGY_ONNX, ENCODER_ONNX, WEIGHTS)

# ONNX graph input/output names.
ONNX_NAMES = {
    GENERATOR_ONNX: ("z", "x"),
    ENERGY_ONNX: ("x", "energy"),
    ENCODER_ONNX: ("x", "z"),
}

DATA_KINDS = ("points", "image", "tabular")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle is missing, malformed, or fails verification. The message names the file."""


def valid_name(name: str) -> bool:
    """Model names are plain identifiers: no path separators, no '..', at most 64 chars."""
    return bool(_NAME_RE.match(name)) and ".." not in name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """The scores of held-out normal rows (rows of the training class that training never
    saw, disjoint from any test rows), sorted ascending: the reference set of the
    conformal p-values (meg.scoring.conformal_pvalues). `target_fpr` is the bundle's
    default target false-positive rate α (flag p <= α); `score` names the score
    ("energy"); `source` says where the rows came from."""

    scores: list[float]
    target_fpr: float
    score: str = "energy"
    source: str = ""

    def __post_init__(self) -> None:
        if not self.scores:
            raise ValueError("calibration.scores is empty")
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"calibration.target_fpr must be in (0, 1), got {self.target_fpr}")
        a = np.asarray(self.scores, dtype=np.float64)
        if not np.isfinite(a).all() or bool(np.any(a[1:] < a[:-1])):
            raise ValueError("calibration.scores must be finite and sorted ascending")

    @property
    def n(self) -> int:
        return len(self.scores)

    @functools.cached_property
    def array(self) -> np.ndarray:
        """The scores as a sorted float64 array (computed once per loaded bundle)."""
        return np.asarray(self.scores, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "target_fpr": self.target_fpr, "n": self.n,
                "source": self.source, "scores": self.scores}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        if "scores" not in d:
            raise ValueError("calibration has no 'scores' (a bundle from before conformal "
                             "calibration); export it again")
        return cls(scores=[float(v) for v in d["scores"]], target_fpr=float(d["target_fpr"]),
                   score=str(d.get("score", "energy")), source=str(d.get("source", "")))

    @classmethod
    def from_scores(cls, scores: np.ndarray, target_fpr: float, score: str = "energy",
                    source: str = "") -> Calibration:
        """Calibration from held-out normal scores (any order): stored sorted, as the
        float32 values the networks output."""
        vals = np.sort(np.asarray(scores, dtype=np.float32).reshape(-1)).astype(np.float64)
        return cls(vals.tolist(), float(target_fpr), score, source)


# --------------------------------------------------------------------------- manifest


@dataclass
class DataSpec:
    kind: str  # one of DATA_KINDS
    shape: list[int]  # how one flat row is viewed, e.g. [2], [1, 28, 28], [121]
    feature_names: list[str]  # one per model column
    value_range: list[float] | None = None  # e.g. [-1, 1] for images

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Manifest:
    name: str
    version: str
    created: str
    recipe: str
    data: DataSpec
    latent_dim: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    calibration: Calibration
    files: dict[str, str]  # file name -> sha256
    architecture: Architecture  # how meg.networks rebuilds G, E and Enc for the weights
    preprocessing: Preprocessing | None = None
    schema_version: int = SCHEMA_VERSION
    # meg.support: the reference rows' file and the support scores' calibration (optional:
    # bundles without it serve the energy score only)
    support: SupportSpec | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "recipe": self.recipe,
            "data": asdict(self.data),
            "latent_dim": self.latent_dim,
            "architecture": self.architecture.to_json(),
            "preprocessing": self.preprocessing.to_json() if self.preprocessing else None,
            "config": self.config,
            "metrics": self.metrics,
            "calibration": self.calibration.to_json(),
            "files": self.files,
        }
        if self.support is not None:
            out["support"] = self.support.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        pre = d.get("preprocessing")
        return cls(
            schema_version=int(d["schema_version"]),
            name=d["name"],
            version=d["version"],
            created=d["created"],
            recipe=d["recipe"],
            data=DataSpec(**d["data"]),
            latent_dim=int(d["latent_dim"]),
            architecture=Architecture.from_json(d["architecture"]),
            preprocessing=Preprocessing.from_json(pre) if pre else None,
            config=d.get("config", {}),
            metrics=d.get("metrics", {}),
            calibration=Calibration.from_json(d["calibration"]),
            files=dict(d["files"]),
            support=SupportSpec.from_json(d["support"]) if d.get("support") else None,
        )


def content_version(files: dict[str, str], config: dict[str, Any]) -> str:
    """Version = hash of every file's sha256 and the resolved config (12 hex digits)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}:{files[name]}\n".encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- signature

KEY_ENV = "MEG_BUNDLE_KEY"
SIGNATURE = "signature"
SIGNATURE_ALG = "hmac-sha256"


def key_from_env() -> bytes | None:
    """The operator's bundle key (MEG_BUNDLE_KEY, UTF-8), or None when unset or empty."""
    key = os.environ.get(KEY_ENV, "")
    return key.encode() if key else None


def canonical_json(raw: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without its `signature`, keys sorted, no
    whitespace, ASCII. It includes `files`, so every file's sha256 is signed too."""
    body = {k: v for k, v in raw.items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_signature(raw: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical_json(raw), hashlib.sha256).hexdigest()


def check_signature(path: Path, raw: dict[str, Any], key: bytes) -> None:
    """Refuse a manifest that is unsigned or not signed with `key` (BundleError naming it)."""
    sig = raw.get(SIGNATURE)
    if sig is None:
        raise BundleError(f"{path}: unsigned manifest; this server requires bundles signed "
                          f"with its {KEY_ENV}")
    if (not isinstance(sig, dict) or sig.get("alg") != SIGNATURE_ALG
            or not isinstance(sig.get("value"), str)):
        raise BundleError(f"{path}: malformed signature (want {{\"alg\": \"{SIGNATURE_ALG}\", "
                          "\"value\": hex}})")
    if not hmac.compare_digest(sig["value"], manifest_signature(raw, key)):
        raise BundleError(f"{path}: signature does not match (manifest changed after signing, "
                          f"or signed with another key)")


def write_manifest(bundle_dir: Path, manifest: Manifest, key: bytes | None = None) -> Path:
    """Write manifest.json; with `key`, signed (HMAC-SHA256 over `canonical_json`)."""
    path = Path(bundle_dir) / MANIFEST
    # Through JSON once, so the signed form is exactly what a reader parses back.
    raw = json.loads(json.dumps(manifest.to_json()))
    if key:
        raw[SIGNATURE] = {"alg": SIGNATURE_ALG, "value": manifest_signature(raw, key)}
    path.write_text(json.dumps(raw, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(bundle_dir: Path, verify: bool = True, key: bytes | None = None) -> Manifest:
    """Read and check a bundle's manifest: schema version, signature (when `key` is
    given: unsigned or wrongly signed manifests are refused), required files, checksums.

    Raises BundleError naming the offending file."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest.json (not a meg bundle)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON ({e})") from e
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version == 1:
        # v1 carried torch.export .pt2 programs, which unpickle on load: never open them.
        raise BundleError(
            f"{path}: schema_version 1 bundle (torch .pt2 programs) is no longer loaded; "
            f"re-export it with this meg (bundle format v{SCHEMA_VERSION}: safetensors "
            "weights and a declared architecture)"
        )
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {version!r} is not supported (this meg reads {SCHEMA_VERSION})"
        )
    if key:
        check_signature(path, raw, key)
    try:
        manifest = Manifest.from_json(raw)
    except ArchitectureError as e:
        raise BundleError(f"{path}: malformed architecture ({e})") from e
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e
    arch = manifest.architecture
    if arch.latent_dim != manifest.latent_dim:
        raise BundleError(f"{path}: architecture.latent_dim {arch.latent_dim} differs from "
                          f"latent_dim {manifest.latent_dim}")
    if list(arch.data_shape) != list(manifest.data.shape):
        raise BundleError(f"{path}: architecture.data_shape {list(arch.data_shape)} differs "
                          f"from data.shape {manifest.data.shape}")
    if manifest.data.kind not in DATA_KINDS:
        raise BundleError(f"{path}: data.kind {manifest.data.kind!r} not one of {DATA_KINDS}")
    for name in REQUIRED_FILES + ((manifest.support.reference,) if manifest.support else ()):
        if name not in manifest.files:
            raise BundleError(f"{path}: manifest lists no checksum for {name}")
    if verify:
        for name, expected in manifest.files.items():
            fpath = bundle_dir / name
            if Path(name).name != name:
                raise BundleError(f"{path}: file entry {name!r} is not a plain file name")
            if not fpath.is_file():
                raise BundleError(f"{fpath}: missing (listed in manifest.json)")
            actual = sha256_file(fpath)
            if actual != expected:
                raise BundleError(
                    f"{fpath}: checksum mismatch (manifest {expected[:12]}…, file {actual[:12]}…)"
                )
    return manifest


def find_bundles(models_dir: Path) -> list[Path]:
    """Bundle directories directly under `models_dir` (those holding a manifest.json),
    plus `models_dir` itself when it is a bundle."""
    models_dir = Path(models_dir)
    if (models_dir / MANIFEST).is_file():
        return [models_dir]
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if (p / MANIFEST).is_file())
