"""Loaded bundles: ONNX Runtime sessions for the feed-forward paths (generate, energy,
encode) and torch networks for everything that needs gradients (MALA, explanations),
rebuilt by `meg.networks` from the manifest's architecture and the safetensors weights
(nothing in a bundle is unpickled or executed).

`ModelRegistry` keeps the served set in step with the models directory: it loads and
warms up new bundles, swaps in a bundle whose manifest version changed (requests in flight
finish on the old one), unloads removed bundles, and keeps the ones that fail out of the
way (reported with the file at fault)."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from meg import bundle as B
from meg.mala import sample_latent
from meg.networks import build_bundled
from meg.support import SupportModel, load_reference
from meg.threads import auto_threads
from service.engine.errors import DeadlineExceeded
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service.engine.models")

OPS = ("generate", "energy", "encode")
ONNX_FILES = {"generate": B.GENERATOR_ONNX, "energy": B.ENERGY_ONNX, "encode": B.ENCODER_ONNX}
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def choose_providers(device: str) -> list[str]:
    """ORT execution providers for `device` (auto|cpu|cuda): CUDA first when the installed
    onnxruntime has it and the device allows, CPU always as the fallback."""
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and CUDA_EP in available:
        return [CUDA_EP, CPU_EP]
    if device == "cuda":
        log.warning("MEG_DEVICE=cuda but onnxruntime has no CUDAExecutionProvider; using CPU")
    return [CPU_EP]


def choose_torch_device(device: str) -> torch.device:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if device == "cuda":
        log.warning("MEG_DEVICE=cuda but torch sees no CUDA device; using CPU")
    return torch.device("cpu")


def session_options(settings: Settings) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # 0: the CPUs this process may use (cgroup quota, affinity); ORT's own default counts
    # the host's cores, which in a CPU-limited container oversubscribes the quota.
    opts.intra_op_num_threads = auto_threads(settings.ort_threads).threads
    opts.inter_op_num_threads = 1
    # Several sessions and torch share a few cores: spinning pools would burn CPU that
    # another pool needs, so idle ORT threads sleep instead.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


@dataclass
class LoadedModel:
    """One servable bundle. All methods are blocking and thread-safe: call them from the
    inference thread pool, never on the event loop."""

    name: str
    path: Path
    manifest: B.Manifest
    sessions: dict[str, ort.InferenceSession]
    torch_device: torch.device
    generator_pt: Any  # torch nn.Module, eval, frozen: z (B, latent) -> x (B, data_dim)
    energy_pt: Any  # torch nn.Module, eval, frozen: x (B, data_dim) -> energy (B,)
    loaded_at: float = field(default_factory=time.time)
    support: SupportModel | None = None  # meg.support: the support scores, when bundled
    # score name -> calibration of the support scores (the energy's is the manifest's)
    support_calibrations: dict[str, B.Calibration] = field(default_factory=dict)

    @property
    def default_score(self) -> str:
        """The score /anomaly uses when a request names none."""
        spec = self.manifest.support
        return spec.default_score if spec is not None and self.support is not None else "energy"

    @property
    def scores(self) -> list[str]:
        """The scores /anomaly can use with this model."""
        return ["energy", *self.support_calibrations] if self.support is not None else ["energy"]

    def calibration(self, score: str) -> B.Calibration | None:
        """The calibration (held-out normal scores) of `score`; None when the bundle has
        no such score. The support scores share the energy's default target_fpr."""
        if score == "energy":
            return self.manifest.calibration
        return self.support_calibrations.get(score) if self.support is not None else None

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def kind(self) -> str:
        return self.manifest.data.kind

    @property
    def data_dim(self) -> int:
        return self.manifest.data.dim

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @property
    def providers(self) -> list[str]:
        """Providers actually in use (ORT may drop CUDA if the GPU cannot be used)."""
        return list(self.sessions["generate"].get_providers())

    @property
    def device(self) -> str:
        return "cuda" if CUDA_EP in self.providers or self.torch_device.type == "cuda" else "cpu"

    def input_dim(self, op: str) -> int:
        return self.latent_dim if op == "generate" else self.data_dim

    def infer(self, op: str, x: np.ndarray) -> np.ndarray:
        """One ONNX Runtime call: generate z->x, energy x->(B,), encode x->z."""
        inp, _ = B.ONNX_NAMES[ONNX_FILES[op]]
        return self.sessions[op].run(None, {inp: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def torch_energy_and_grad(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """E(x) (B,) and dE/dx (B, data_dim) from the torch network."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.torch_device)
        with torch.enable_grad():
            xt = xt.detach().requires_grad_(True)
            e = self.energy_pt(xt).reshape(xt.shape[0])
            (g,) = torch.autograd.grad(e.sum(), xt)
        return e.detach().cpu().numpy(), g.detach().cpu().numpy()

    def torch_generate(self, z: np.ndarray) -> np.ndarray:
        zt = torch.as_tensor(np.asarray(z, dtype=np.float32), device=self.torch_device)
        with torch.no_grad():
            return self.generator_pt(zt).cpu().numpy()

    def sample_latent_mcmc(self, n: int, steps: int, step_size: float, temperature: float,
                           prior: bool, adapt: bool, seed: int,
                           deadline: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """MALA in latent space (torch), seeded: (z (n, latent), acceptance (n,), step size).

        `deadline` (time.monotonic()): past it the chain stops with DeadlineExceeded at its
        next energy evaluation, so an abandoned request does not keep a thread busy."""
        rng = torch.Generator(device=self.torch_device).manual_seed(seed)
        energy = self.energy_pt
        if deadline is not None:
            def energy(x: torch.Tensor) -> torch.Tensor:
                if time.monotonic() > deadline:
                    raise DeadlineExceeded("MALA")
                return self.energy_pt(x)

        res = sample_latent(self.generator_pt, energy, n=n, latent_dim=self.latent_dim,
                            n_steps=steps, step_size=step_size, temperature=temperature,
                            prior=prior, adapt=adapt, rng=rng, device=self.torch_device)
        return res.z.cpu().numpy(), res.acceptance.cpu().numpy(), float(res.step_size)

    def warm_up(self) -> None:
        """Run every path once so the first request pays no lazy initialisation."""
        for op in OPS:
            out = self.infer(op, np.zeros((2, self.input_dim(op)), dtype=np.float32))
            if not np.all(np.isfinite(out)):
                raise B.BundleError(f"{ONNX_FILES[op]}: non-finite output on warm-up")
        try:
            self.torch_energy_and_grad(np.zeros((2, self.data_dim), dtype=np.float32))
            self.torch_generate(np.zeros((2, self.latent_dim), dtype=np.float32))
            self.sample_latent_mcmc(2, 1, 0.01, 1.0, True, False, 0)
        except Exception as e:
            raise B.BundleError(f"{self.path / B.WEIGHTS}: torch networks fail on warm-up "
                                f"({type(e).__name__}: {e})") from e

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "kind": self.kind,
                "data_dim": self.data_dim, "latent_dim": self.latent_dim,
                "providers": self.providers, "device": self.device, "status": "ready"}


def _check_onnx_dims(path: Path, op: str, session: ort.InferenceSession,
                     manifest: B.Manifest) -> None:
    """The ONNX graph's fixed input/output widths agree with the manifest (the batch axis
    is dynamic); a mismatch names the graph file."""
    fname = ONNX_FILES[op]
    in_dim = manifest.latent_dim if op == "generate" else manifest.data.dim
    out_dim = {"generate": manifest.data.dim, "encode": manifest.latent_dim}.get(op)
    for what, arg, want in (("input", session.get_inputs()[0], in_dim),
                            ("output", session.get_outputs()[0], out_dim)):
        shape = list(arg.shape)
        got = shape[1] if len(shape) > 1 else None
        if want is not None and isinstance(got, int) and got != want:
            raise B.BundleError(f"{path / fname}: {what} {arg.name!r} has width {got}, the "
                                f"manifest says {want} (latent_dim {manifest.latent_dim}, "
                                f"data dim {manifest.data.dim})")


def load_torch_networks(path: Path, manifest: B.Manifest,
                        device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and E rebuilt from the manifest's architecture, weights from the safetensors file
    (a JSON header and raw tensors: parsing it runs no code). Errors name the file."""
    wpath = path / B.WEIGHTS
    try:
        state = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise B.BundleError(f"{wpath}: not a readable safetensors file ({e})") from e
    try:
        nets = build_bundled(manifest.architecture, state)
    except (ValueError, RuntimeError) as e:
        raise B.BundleError(f"{wpath}: does not fit the manifest's architecture ({e})") from e
    modules = []
    for module in (nets.generator, nets.energy):
        module = module.to(device).eval()
        module.requires_grad_(False)  # gradients are taken w.r.t. inputs only
        modules.append(module)
    return modules[0], modules[1]


def support_calibrations(manifest: B.Manifest) -> dict[str, B.Calibration]:
    """Each support score's Calibration (its held-out scores; the energy's target_fpr)."""
    spec = manifest.support
    if spec is None:
        return {}
    try:
        return {score: B.Calibration(sorted(values), manifest.calibration.target_fpr,
                                     score=score,
                                     source=spec.calibration_source)
                for score, values in spec.calibration.items()}
    except ValueError as e:
        raise B.BundleError(f"{manifest.name}: support calibration: {e}") from e


def load_support(path: Path, manifest: B.Manifest) -> SupportModel | None:
    """The bundle's support scores (meg.support), or None when it has none. The reference
    rows are read as a plain float32 .npy, never unpickled; BundleError names the file."""
    spec = manifest.support
    if spec is None:
        return None
    try:
        return spec.model(load_reference(path / spec.reference, manifest.data.dim))
    except ValueError as e:
        raise B.BundleError(f"{path / spec.reference}: {e}") from e


def load_model(path: Path, settings: Settings, name: str | None = None) -> LoadedModel:
    """Verify the manifest and checksums, open the ONNX sessions, rebuild the torch networks
    from the declared architecture and the safetensors weights, warm everything up. Raises
    BundleError naming the file at fault (or whatever ORT/torch raise) on failure."""
    path = Path(path)
    manifest = B.read_manifest(path, verify=True, key=settings.bundle_key_bytes)
    # The weights first: they hold the declared sizes the ONNX graphs are then checked by.
    device = choose_torch_device(settings.device)
    generator, energy = load_torch_networks(path, manifest, device)
    providers = choose_providers(settings.device)
    opts = session_options(settings)
    sessions = {}
    for op, fname in ONNX_FILES.items():
        try:
            sessions[op] = ort.InferenceSession(str(path / fname), sess_options=opts,
                                                providers=providers)
        except Exception as e:  # ORT raises its own exception types
            raise B.BundleError(f"{path / fname}: cannot load ONNX model ({e})") from e
        _check_onnx_dims(path, op, sessions[op], manifest)
    model = LoadedModel(name=name or path.name, path=path, manifest=manifest, sessions=sessions,
                        torch_device=device, generator_pt=generator, energy_pt=energy,
                        support=load_support(path, manifest),
                        support_calibrations=support_calibrations(manifest))
    model.warm_up()
    return model


Fingerprint = tuple[tuple[str, int, int], ...]


def _fingerprint(path: Path) -> Fingerprint:
    """The directory's identity and its files' names, sizes and mtimes: a changed
    fingerprint means the bundle is worth another look (a failed one was fixed, or a new
    version was moved in place)."""
    try:
        st = os.stat(path)
        files = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                       for e in os.scandir(path) if e.is_file())
    except OSError:
        return ()
    return (("", st.st_ino, st.st_mtime_ns), *files)


@dataclass(frozen=True)
class ModelStatus:
    """Where one model name stands: `ready` (served; `reason` set when a newer version on
    disk failed and the loaded one still serves), `loading` (on disk, not loaded yet),
    `failed` (`reason` names the file at fault) or `unknown`."""

    name: str
    status: str  # ready | loading | failed | unknown
    version: str | None = None
    reason: str | None = None


class ModelRegistry:
    """The models being served, the ones that failed, and the models directory they come
    from. `scan()` brings the first two in step with the third."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        # Copy-on-write: request handlers read these on the event loop while scan() runs
        # in a pool thread; each assignment swaps in a whole new snapshot.
        self.models: dict[str, LoadedModel] = {}
        self.failed: dict[str, str] = {}
        self.loading: frozenset[str] = frozenset()
        self._tried: dict[str, Fingerprint] = {}  # fingerprint at the last load attempt
        self._info: dict[str, tuple[str, str, str, str]] = {}  # model_info labels per model
        self._bad_names: set[str] = set()  # invalid directory names already logged
        self._missing: set[str] = set()  # known names not on disk at the last scan
        self._default: str | None = None  # chosen once when MEG_DEFAULT_MODEL is unset
        self._lock = threading.Lock()  # one scan at a time (start-up load vs poller)

    # ------------------------------------------------------------------ scanning

    def _listing(self) -> dict[str, Path]:
        """Bundles on disk by serving name; invalid names are logged once each."""
        found: dict[str, Path] = {}
        bad: set[str] = set()
        for path in B.find_bundles(self.settings.models_dir):
            if B.valid_name(path.name):
                found[path.name] = path
                continue
            bad.add(path.name)
            if path.name not in self._bad_names:
                log.error("skipping bundle %s: invalid directory name (letters, digits, "
                          "'_', '.', '-'; at most 64)", path, extra={"bundle": path.name})
        self._bad_names = bad  # a name that disappears and comes back is logged again
        return found

    def _needs_load(self, name: str, path: Path, fp: Fingerprint) -> bool:
        if self._tried.get(name) == fp:
            return False  # nothing changed since the last attempt
        current = self.models.get(name)
        if current is None:
            return True
        try:  # cheap: no checksums; the load itself verifies everything
            version = B.read_manifest(path, verify=False).version
        except B.BundleError:
            return True  # being replaced, or broken: the load reports why
        if version == current.version:
            self._tried[name] = fp  # touched, not replaced
            return False
        return True

    def scan(self) -> list[str]:
        """Bring the served models in step with the models directory: load new bundles,
        swap in new versions, retry failed bundles whose files changed, unload removed
        ones. Blocking; returns the names (re)loaded by this call."""
        loaded: list[str] = []
        with self._lock:
            found = self._listing()
            # Unloaded only when missing on two scans in a row: re-exporting renames the
            # old directory away and the new one in, and a scan may fall in between.
            gone = (set(self.models) | set(self.failed) | set(self._tried)) - set(found)
            for name in sorted(gone & self._missing):
                self._unload(name)
            self._missing = gone - self._missing
            todo = []
            for name, path in sorted(found.items()):
                fp = _fingerprint(path)
                if self._needs_load(name, path, fp):
                    todo.append((name, path, fp))
            self.loading = frozenset(name for name, _, _ in todo)
            for name, path, fp in todo:
                self._tried[name] = fp
                try:
                    if self._load(name, path):
                        loaded.append(name)
                finally:
                    self.loading = self.loading - {name}
            self._choose_default()
        return loaded

    def _load(self, name: str, path: Path) -> bool:
        t0 = time.perf_counter()
        old = self.models.get(name)
        try:
            model = load_model(path, self.settings, name)
        except Exception as e:
            reason = str(e) if isinstance(e, B.BundleError) else f"{path}: {type(e).__name__}: {e}"
            if old is not None:
                reason += f" (version {old.version} keeps serving)"
            self.failed = {**self.failed, name: reason}
            log.error("bundle %s failed to load: %s", name, reason,
                      extra={"bundle": name, "error": reason})
            return False
        # One assignment swaps the new version in: a request that resolved the old model
        # keeps its reference (and its batchers, keyed by version) until it finishes.
        self.models = {**self.models, name: model}
        self.failed = {k: v for k, v in self.failed.items() if k != name}
        self._set_info(name, model)
        log.info("%s bundle %s version %s on %s (%s) in %.2fs",
                 "loaded" if old is None else f"replaced version {old.version} of", name,
                 model.version, model.device, ",".join(model.providers),
                 time.perf_counter() - t0, extra={"bundle": name})
        return True

    def _set_info(self, name: str, model: LoadedModel | None) -> None:
        labels = self._info.pop(name, None)
        if labels is not None:
            self.metrics.model_info.remove(*labels)
        if model is not None:
            labels = (name, model.version, model.providers[0], model.device)
            self.metrics.model_info.labels(*labels).set(1)
            self._info[name] = labels

    def _unload(self, name: str) -> None:
        """Forget a bundle whose directory is gone (requests holding it still finish)."""
        was_served = name in self.models
        self.models = {k: v for k, v in self.models.items() if k != name}
        self.failed = {k: v for k, v in self.failed.items() if k != name}
        self._tried.pop(name, None)
        self._set_info(name, None)
        if was_served:
            log.info("unloaded bundle %s: its directory is gone", name, extra={"bundle": name})

    # ------------------------------------------------------------------ the default model

    def _choose_default(self) -> None:
        """Without MEG_DEFAULT_MODEL, pick the default once: "digits" if loaded, else the
        first loaded (by name). Bundles appearing later never change it; only its removal
        does, and that is logged."""
        if self.settings.default_model or (self._default is not None
                                           and self._default in self.models):
            return
        previous = self._default
        self._default = ("digits" if "digits" in self.models
                         else min(self.models) if self.models else None)
        if previous is not None:
            log.warning("default model %s was unloaded; the default is now %s", previous,
                        self._default)
        elif self._default is not None:
            log.info("default model: %s (set MEG_DEFAULT_MODEL to choose)", self._default)

    @property
    def default_name(self) -> str | None:
        # An explicit MEG_DEFAULT_MODEL that is not loaded stays the default (requests
        # without a model then get a clear 404) rather than silently serving another model.
        return self.settings.default_model or self._default

    # ------------------------------------------------------------------ status

    def _on_disk(self, name: str) -> bool:
        root = Path(self.settings.models_dir)
        if (root / B.MANIFEST).is_file():  # the models dir is itself one bundle
            return root.name == name
        return (root / name / B.MANIFEST).is_file()

    def status(self, name: str) -> ModelStatus:
        """Readiness of one model name (for GET /models/{name}/ready)."""
        model = self.models.get(name)
        if model is not None:
            return ModelStatus(name, "ready", model.version, self.failed.get(name))
        if name in self.loading:
            return ModelStatus(name, "loading")
        if name in self.failed:
            return ModelStatus(name, "failed", reason=self.failed[name])
        if B.valid_name(name) and self._on_disk(name):
            return ModelStatus(name, "loading")  # the next scan picks it up
        return ModelStatus(name, "unknown")
