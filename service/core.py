"""The engine behind the routes: model lookup, input checking, and the operations
(sample, energy, encode, anomaly, preview). Blocking work runs in the inference thread
pool; feed-forward ops go through the dynamic batchers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from service import scoring
from service.batching import BatcherPool, DeadlineError
from service.bundle import Preprocessing, RecordError, valid_name
from service.errors import ApiError
from service.metrics import Metrics
from service.models import DeadlineExceeded, LoadedModel, ModelRegistry
from service.render import preview_png
from service.settings import Settings

log = logging.getLogger("service.core")

T = TypeVar("T")
_F32_MAX = float(np.finfo(np.float32).max)


def decode_records(pre: Preprocessing, rows: np.ndarray) -> list[dict[str, Any]]:
    """Model-space rows back to raw records: numeric columns un-scaled, categorical
    features as the argmax of their one-hot block (the inverse of transform_records)."""
    out: list[dict[str, Any]] = [{} for _ in range(len(rows))]
    col = 0
    for feat in pre.features:
        if feat.kind == "numeric":
            scale = feat.scale if feat.scale else 1.0
            values = rows[:, col].astype(np.float64) / scale + feat.offset
            for rec, v in zip(out, values, strict=True):
                rec[feat.name] = float(v)
        else:
            idx = rows[:, col:col + feat.width].argmax(axis=1)
            for rec, k in zip(out, idx, strict=True):
                rec[feat.name] = feat.categories[int(k)]
        col += feat.width
    return out


def column_groups(model: LoadedModel, records: bool) -> tuple[list[str], np.ndarray]:
    """Names of the explanation features and, per model column, its group index. For
    records, one-hot columns of a feature form one group (their gradients are summed)."""
    pre = model.manifest.preprocessing
    if records and pre is not None:
        names = [f.name for f in pre.features]
        index = np.repeat(np.arange(len(pre.features)), [f.width for f in pre.features])
        return names, index
    names = list(model.manifest.data.feature_names)
    if len(names) != model.data_dim:
        names = [f"x{i}" for i in range(model.data_dim)]
    return names, np.arange(model.data_dim)


class Service:
    """Everything a request needs; one per app (stored on app.state.service)."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.registry = ModelRegistry(settings, metrics)
        self.executor = ThreadPoolExecutor(max_workers=settings.inference_workers,
                                           thread_name_prefix="meg-infer")
        self.batchers = BatcherPool(max_batch_size=settings.max_batch_size,
                                    max_delay_s=settings.max_delay_ms / 1000.0,
                                    queue_size=settings.queue_size, executor=self.executor,
                                    metrics=metrics)
        self.started = False  # the start-up load has finished

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        return self.started and bool(self.registry.models)

    async def load(self) -> list[str]:
        """Scan the models directory in the pool (loading is slow and blocking)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.registry.scan)

    async def poll(self) -> None:
        """Background task: rescan every poll interval so bundles that appear later (or
        failed ones that were fixed) get loaded without a restart."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.load()
            except Exception:  # never let the poller die
                log.exception("rescanning %s failed", self.settings.models_dir)

    async def close(self) -> None:
        await self.batchers.close(timeout=self.settings.request_timeout_s)
        # Off the loop: waiting for a busy pool thread must not freeze the event loop.
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=False)

    # ------------------------------------------------------------------ helpers

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.settings.request_timeout_s

    def resolve(self, name: str | None) -> LoadedModel:
        """The model a request names (or the default). 422 bad name, 404 unknown, 503 none."""
        if name is None:
            name = self.registry.default_name
            if name is None:
                raise ApiError(503, "no_model", "no model is loaded yet", "model",
                               {"Retry-After": str(int(self.settings.poll_interval_s) or 1)})
        if not valid_name(name):
            raise ApiError(422, "invalid_model_name",
                           "model names are letters, digits, '.', '_' and '-' (at most 64)",
                           "model")
        model = self.registry.models.get(name)
        if model is None:
            reason = self.registry.failed.get(name)
            msg = f"model {name!r} failed to load: {reason}" if reason else f"unknown model {name!r}"
            raise ApiError(404, "model_not_found", msg, "model")
        return model

    def rows(self, model: LoadedModel, inputs: list[list[float]] | None,
             records: list[dict[str, Any]] | None) -> np.ndarray:
        """Request rows as float32 (N, data_dim), checked: row count, widths, float32 range."""
        n = len(inputs) if inputs is not None else len(records or [])
        field = "inputs" if inputs is not None else "records"
        if n > self.settings.max_rows:
            raise ApiError(422, "too_many_rows", f"{n} rows; at most {self.settings.max_rows} per "
                           "request", field)
        if records is not None:
            pre = model.manifest.preprocessing
            if pre is None:
                raise ApiError(422, "records_not_supported", f"model {model.name!r} has no "
                               "preprocessing; send model-space 'inputs' instead", "records")
            try:
                x = pre.transform_records(records)
            except RecordError as e:
                raise ApiError(422, "invalid_record", str(e), e.field) from None
            if x.shape[1] != model.data_dim:  # a bundle inconsistency, not the client's fault
                raise RuntimeError(f"{model.name}: preprocessing gives {x.shape[1]} columns, "
                                   f"model expects {model.data_dim}")
            return x
        assert inputs is not None
        dim = model.data_dim
        for i, row in enumerate(inputs):
            if len(row) != dim:
                raise ApiError(422, "wrong_dimension", f"inputs[{i}] has {len(row)} values; "
                               f"model {model.name!r} expects {dim}", f"inputs[{i}]")
        x64 = np.asarray(inputs, dtype=np.float64)
        big = np.abs(x64) > _F32_MAX  # finite in JSON, infinite as float32
        if big.any():
            i, j = (int(v) for v in np.argwhere(big)[0])
            raise ApiError(422, "out_of_range", f"inputs[{i}][{j}] exceeds the float32 range",
                           f"inputs[{i}][{j}]")
        return x64.astype(np.float32)

    @staticmethod
    def finite(out: np.ndarray, what: str) -> np.ndarray:
        # JSON cannot carry NaN/Inf; an input extreme enough to overflow the network is
        # the client's to fix (4xx), not a server failure.
        if not np.all(np.isfinite(out)):
            raise ApiError(422, "non_finite_output", f"the model's {what} overflowed for these "
                           "inputs (values too large)", "inputs")
        return out

    async def infer(self, model: LoadedModel, op: str, x: np.ndarray, deadline: float) -> np.ndarray:
        """A feed-forward op through the (model, op) batcher."""
        batcher = self.batchers.get(model.name, model.version, op,
                                    lambda rows: model.infer(op, rows))
        return await batcher.submit(x, deadline)

    async def blocking(self, fn: Callable[..., T], *args: Any, deadline: float, model: str,
                       op: str, backend: str = "torch") -> T:
        """Run unbatched blocking work (torch) in the pool, timed and under the deadline.
        A timed-out call still finishes in its thread; only the answer is abandoned."""
        loop = asyncio.get_running_loop()
        hist = self.metrics.inference_duration.labels(model=model, op=op, backend=backend)

        def timed() -> T:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                hist.observe(time.perf_counter() - t0)

        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineError()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.executor, timed), remaining)
        except (TimeoutError, DeadlineExceeded):
            raise DeadlineError() from None

    # ------------------------------------------------------------------ operations

    def check_n(self, n: int, steps: int | None) -> None:
        if n > self.settings.max_samples:
            raise ApiError(422, "too_many_samples", f"n={n}; at most {self.settings.max_samples}", "n")
        if steps is not None and steps > self.settings.max_mcmc_steps:
            raise ApiError(422, "too_many_steps", f"mcmc.steps={steps}; at most "
                           f"{self.settings.max_mcmc_steps}", "mcmc.steps")

    async def sample(self, model: LoadedModel, n: int, seed: int,
                     mcmc: dict[str, Any] | None) -> dict[str, Any]:
        """z ~ N(0, I) (numpy, seeded) or latent MALA (torch, seeded), then the ONNX
        generator. Returns samples, latent and MALA statistics as arrays."""
        deadline = self.deadline()
        out: dict[str, Any] = {}
        if mcmc is None:
            z = np.random.default_rng(seed).standard_normal((n, model.latent_dim), dtype=np.float32)
        else:
            # The same deadline on the monotonic clock, so the chain itself can stop.
            stop_at = time.monotonic() + (deadline - asyncio.get_running_loop().time())
            z, acc, eps = await self.blocking(
                model.sample_latent_mcmc, n, mcmc["steps"], mcmc["step_size"],
                mcmc["temperature"], mcmc["prior"], mcmc["adapt"], seed, stop_at,
                deadline=deadline, model=model.name, op="mala")
            rate = float(acc.mean())
            self.metrics.mala_acceptance.labels(model=model.name).observe(rate)
            out["acceptance_rate"], out["step_size"] = rate, eps
        x = self.finite(await self.infer(model, "generate", z, deadline), "samples")
        self.metrics.samples.labels(model=model.name, mcmc=str(mcmc is not None).lower()).inc(n)
        out["samples"], out["latent"] = x, z
        return out

    async def energy(self, model: LoadedModel, x: np.ndarray) -> np.ndarray:
        return self.finite(await self.infer(model, "energy", x, self.deadline()), "energy")

    async def encode(self, model: LoadedModel, x: np.ndarray) -> np.ndarray:
        return self.finite(await self.infer(model, "encode", x, self.deadline()), "latent code")

    async def anomaly(self, model: LoadedModel, x: np.ndarray, threshold: float | None,
                      contamination: float | None, explain: bool, top_k: int,
                      from_records: bool) -> tuple[float, list[dict[str, Any]]]:
        """Scores, percentiles and flags (service/scoring.py decides the threshold);
        optional explanations from the torch gradient of the energy."""
        deadline = self.deadline()
        cal = model.manifest.calibration
        if threshold is None:
            threshold = scoring.threshold_from_calibration(cal, contamination)
        scores = self.finite(await self.infer(model, "energy", x, deadline), "energy")
        pct = scoring.percentile_rank(cal, scores)
        flags = scoring.flag(scores, threshold)
        results: list[dict[str, Any]] = [
            {"score": float(s), "percentile": float(p), "is_anomaly": bool(f)}
            for s, p, f in zip(scores, pct, flags, strict=True)]
        if explain:
            _, grad = await self.blocking(model.torch_energy_and_grad, x, deadline=deadline,
                                          model=model.name, op="explain")
            names, groups = column_groups(model, from_records)
            summed = np.zeros((len(x), len(names)), dtype=np.float64)
            np.add.at(summed.T, groups, grad.T.astype(np.float64))  # sum columns per feature
            k = min(top_k, len(names))
            order = np.argsort(-np.abs(summed), axis=1, kind="stable")[:, :k]
            for r, res in enumerate(results):
                res["explanation"] = [{"feature": names[j], "gradient": float(summed[r, j])}
                                      for j in order[r]]
        self.metrics.anomaly_scored.labels(model=model.name).inc(len(x))
        self.metrics.anomalies_flagged.labels(model=model.name).inc(int(flags.sum()))
        return float(threshold), results

    async def preview(self, model: LoadedModel, n: int, steps: int, seed: int) -> bytes:
        """A PNG of `n` samples: image grid, 2-D scatter over energy, or energy histogram."""
        mcmc = None if steps == 0 else {"steps": steps, "step_size": 0.01, "temperature": 1.0,
                                        "prior": True, "adapt": False}
        res = await self.sample(model, n, seed, mcmc)

        def energy_fn(rows: np.ndarray) -> np.ndarray:
            return model.infer("energy", rows)

        return await self.blocking(preview_png, model.manifest.data, res["samples"], energy_fn,
                                   deadline=self.deadline(), model=model.name, op="render",
                                   backend="onnxruntime")
