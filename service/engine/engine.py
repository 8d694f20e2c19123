"""The engine: models, batching and the operations (sample, energy, encode, anomaly,
preview), with no knowledge of any protocol. Operations return typed results
(service/engine/results.py) and raise domain errors (service/engine/errors.py); each
front-end (the HTTP API today) maps those to its own shapes in one place.

Work classes, each with its own limits (service/engine/admission.py) and threads, so a
flood of one kind never queues in front of another:

* feed-forward (energy, encode, generate, anomaly scores): the dynamic batchers
  (batching.py) on the feed-forward pool (`inference_workers` threads);
* MCMC: one continuously batched MALA loop per model on its own thread (chains.py);
* explain and render: the heavy pool (`heavy_workers` threads), each class bounded.

Every request carries a deadline; queued work that outlives it never starts, and
running MCMC, explain and render work checks it as it goes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from meg import scoring
from meg.bundle import valid_name
from meg.preprocessing import RecordError
from meg.render import preview_png
from meg.results import Energies, Latents
from service.engine.admission import Admission
from service.engine.batching import BatcherPool
from service.engine.chains import ChainLoop, ChainSpec, retain_freed_memory
from service.engine.errors import DeadlineExceeded, InvalidInput, ModelNotFound, Unavailable
from service.engine.models import LoadedModel, ModelRegistry
from service.engine.results import (
    Anomalies,
    Contribution,
    MCMCParams,
    Rows,
    Samples,
)
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service.engine")

T = TypeVar("T")
_F32_MAX = float(np.finfo(np.float32).max)


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


def _finite(out: np.ndarray, what: str) -> np.ndarray:
    # No protocol can carry NaN/Inf as an answer; an input extreme enough to overflow the
    # network is the client's to fix, not a server failure.
    if not np.isfinite(out).all():
        raise InvalidInput("non_finite_output", f"the model's {what} overflowed for these "
                           "inputs (values too large)", "inputs")
    return out


_EXPLAIN_CHUNK = 1024  # rows per gradient pass: the deadline is checked between chunks


def _gradients(model: LoadedModel, x: np.ndarray, stop_at: float) -> np.ndarray:
    """dE/dx (N, data_dim) in chunks, stopping with DeadlineExceeded past `stop_at`
    (time.monotonic())."""
    out = []
    for start in range(0, len(x), _EXPLAIN_CHUNK):
        if time.monotonic() >= stop_at:
            raise DeadlineExceeded("explain")
        out.append(model.torch_energy_and_grad(x[start:start + _EXPLAIN_CHUNK])[1])
    return np.concatenate(out) if out else np.zeros((0, model.data_dim), dtype=np.float32)


def _row_problems(code: str, problems: list[tuple[int, str, str]]) -> InvalidInput:
    """One InvalidInput for every (row index, field, reason): the first in code/message/
    field, all of them in details."""
    index, field, reason = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return InvalidInput(code, reason + more, field, details=[
        {"index": i, "field": f, "reason": r} for i, f, r in problems])


class Engine:
    """Everything an operation needs; one per server process."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.registry = ModelRegistry(settings, metrics)
        # Feed-forward (ONNX, batched) and heavy (torch, unbatched) work on separate pools;
        # bundle loading on its own thread so a rescan never delays a request.
        self.executor = ThreadPoolExecutor(max_workers=settings.inference_workers,
                                           thread_name_prefix="meg-infer")
        self.heavy_executor = ThreadPoolExecutor(max_workers=settings.heavy_workers,
                                                 thread_name_prefix="meg-heavy")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meg-load")
        self.batchers = BatcherPool(max_batch_size=settings.max_batch_size,
                                    max_delay_s=settings.max_delay_ms / 1000.0,
                                    queue_size=settings.queue_size, executor=self.executor,
                                    metrics=metrics,
                                    inline_s=settings.inline_inference_ms / 1000.0)
        self.admission = {
            "mcmc": Admission("mcmc", settings.heavy_workers, settings.mcmc_queue_size),
            "explain": Admission("explain", settings.explain_concurrency,
                                 settings.explain_queue_size),
            "render": Admission("render", settings.render_concurrency,
                                settings.render_queue_size),
        }
        self.chain_loops: dict[tuple[str, str], ChainLoop] = {}
        self.started = False  # the start-up load has finished

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        return self.started and bool(self.registry.models)

    async def load(self) -> list[str]:
        """Scan the models directory in the pool (loading is slow and blocking)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.loader, self.registry.scan)

    async def poll(self) -> None:
        """Background task: rescan every poll interval so bundles that appear later (or
        failed ones that were fixed) get loaded without a restart."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.load()
                await self.prune()
            except Exception:  # never let the poller die
                log.exception("rescanning %s failed", self.settings.models_dir)

    async def prune(self) -> None:
        """Release the batchers and chain loops of model versions the registry no longer
        serves, so replacing or removing bundles does not leak threads and memory."""
        live = {(m.name, m.version) for m in self.registry.models.values()}
        timeout = self.settings.request_timeout_s
        stale = [k for k in self.chain_loops if k not in live]
        loops = [self.chain_loops.pop(k) for k in stale]
        await asyncio.gather(self.batchers.prune(live, timeout),
                             *(asyncio.to_thread(c.close, timeout) for c in loops))

    async def close(self) -> None:
        """Refuse new work (503 shutting_down), let admitted work finish (each request is
        bounded by its deadline), then stop the threads."""
        for adm in self.admission.values():
            adm.close()
        timeout = self.settings.request_timeout_s
        # Off the loop: waiting for busy threads must not freeze the event loop.
        await asyncio.gather(
            self.batchers.close(timeout=timeout),
            *(asyncio.to_thread(c.close, timeout) for c in self.chain_loops.values()))
        for pool in (self.executor, self.heavy_executor, self.loader):
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=False)

    # ------------------------------------------------------------------ models and rows

    def resolve(self, name: str | None) -> LoadedModel:
        """The model a request names, or the default one."""
        if name is None:
            name = self.registry.default_name
            if name is None:
                raise Unavailable("no_model", "no model is loaded yet",
                                  int(self.settings.poll_interval_s) or 1)
        if not valid_name(name):
            raise InvalidInput("invalid_model_name",
                               "model names are letters, digits, '.', '_' and '-' (at most 64)",
                               "model")
        model = self.registry.models.get(name)
        if model is None:
            reason = self.registry.failed.get(name)
            msg = f"model {name!r} failed to load: {reason}" if reason else f"unknown model {name!r}"
            raise ModelNotFound("model_not_found", msg, "model")
        return model

    def rows(self, model: LoadedModel, inputs: list[list[float]] | np.ndarray | None = None,
             records: list[dict[str, Any]] | None = None,
             unknown_category: str | None = None) -> Rows:
        """Request rows in model space, checked: row count, widths, float32 range. Give
        exactly one of `inputs` (model-space rows) or `records` (through the bundle's
        preprocessing; `unknown_category` "zeros" | "error" overrides the bundle's policy
        for categories training never saw). A bad request lists every bad row and value
        (InvalidInput.details), not only the first."""
        n = len(inputs) if inputs is not None else len(records or [])
        field = "inputs" if inputs is not None else "records"
        if n > self.settings.max_rows:
            raise InvalidInput("too_many_rows", f"{n} rows; at most {self.settings.max_rows} "
                               "per request", field)
        if records is not None:
            pre = model.manifest.preprocessing
            if pre is None:
                raise InvalidInput("records_not_supported", f"model {model.name!r} has no "
                                   "preprocessing; send model-space 'inputs' instead", "records")
            try:
                enc = pre.encode_records(records, unknown_category)
            except RecordError as e:
                details = [{"index": p.index, "field": p.field, "reason": p.reason}
                           for p in e.problems]
                raise InvalidInput("invalid_record", str(e), e.field, details=details) from None
            if enc.x.shape[1] != model.data_dim:  # a bundle inconsistency, not the client's fault
                raise RuntimeError(f"{model.name}: preprocessing gives {enc.x.shape[1]} columns, "
                                   f"model expects {model.data_dim}")
            return Rows(enc.x, from_records=True, unseen=enc.unseen)
        assert inputs is not None
        dim = model.data_dim
        wrong = [(i, f"inputs[{i}]", f"inputs[{i}] has {len(row)} values; model "
                  f"{model.name!r} expects {dim}") for i, row in enumerate(inputs) if len(row) != dim]
        if wrong:
            raise _row_problems("wrong_dimension", wrong)
        try:
            x64 = np.asarray(inputs, dtype=np.float64)
        except OverflowError:  # an integer beyond float64 (JSON integers are unbounded)
            raise InvalidInput("out_of_range", "inputs hold a number beyond the float range",
                               "inputs") from None
        big = ~(np.abs(x64) <= _F32_MAX)  # beyond float32 (or not finite)
        if big.any():
            raise _row_problems("out_of_range", [
                (int(i), f"inputs[{i}][{j}]", f"inputs[{i}][{j}] exceeds the float32 range")
                for i, j in np.argwhere(big)])
        return Rows(x64.astype(np.float32))

    # ------------------------------------------------------------------ running work

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.settings.request_timeout_s

    async def infer(self, model: LoadedModel, op: str, x: np.ndarray, deadline: float) -> np.ndarray:
        """A feed-forward op through the (model, op) batcher."""
        batcher = self.batchers.get(model.name, model.version, op,
                                    lambda rows: model.infer(op, rows))
        return await batcher.submit(x, deadline)

    def stop_at(self, deadline: float) -> float:
        """A loop.time() deadline on the time.monotonic() clock, for worker threads."""
        return time.monotonic() + (deadline - asyncio.get_running_loop().time())

    async def blocking(self, fn: Callable[..., T], *args: Any, deadline: float, model: str,
                       op: str, backend: str = "torch") -> T:
        """Run unbatched blocking work (torch) in the heavy pool, timed and under the
        deadline. Work still queued for a thread at its deadline never starts; `fn` should
        check the deadline itself where it can stop early (see `stop_at`)."""
        loop = asyncio.get_running_loop()
        hist = self.metrics.inference_duration.labels(model=model, op=op, backend=backend)
        stop_at = self.stop_at(deadline)

        def timed() -> T:
            if time.monotonic() >= stop_at:
                raise DeadlineExceeded()
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                hist.observe(time.perf_counter() - t0)

        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.heavy_executor, timed),
                                          remaining)
        except TimeoutError:
            raise DeadlineExceeded() from None

    # ------------------------------------------------------------------ operations

    def check_n(self, n: int, steps: int | None) -> None:
        if n > self.settings.max_samples:
            raise InvalidInput("too_many_samples", f"n={n}; at most {self.settings.max_samples}",
                               "n")
        if steps is not None and steps > self.settings.max_mcmc_steps:
            raise InvalidInput("too_many_steps", f"mcmc.steps={steps}; at most "
                               f"{self.settings.max_mcmc_steps}", "mcmc.steps")

    async def sample(self, model: LoadedModel, n: int, seed: int | None = None,
                     mcmc: MCMCParams | None = None, return_records: bool = False) -> Samples:
        """Draw `n` samples: z ~ N(0, I) (numpy, seeded) or latent MALA (torch, seeded),
        then the ONNX generator. Same seed, same samples; a random seed when None."""
        self.check_n(n, mcmc.steps if mcmc else None)
        pre = model.manifest.preprocessing
        if return_records and pre is None:
            raise InvalidInput("records_not_supported",
                               f"model {model.name!r} has no preprocessing", "return_records")
        seed = seed if seed is not None else secrets.randbits(63)
        deadline = self.deadline()
        rate = eps = None
        if mcmc is None:
            z = np.random.default_rng(seed).standard_normal((n, model.latent_dim), dtype=np.float32)
        else:
            z, acc, eps = await self._mcmc(model, n, seed, mcmc, deadline)
            rate = float(acc.mean())
            self.metrics.mala_acceptance.labels(model=model.name).observe(rate)
        x = _finite(await self.infer(model, "generate", z, deadline), "samples")
        self.metrics.samples.labels(model=model.name, mcmc=str(mcmc is not None).lower()).inc(n)
        records = pre.decode_rows(x) if return_records and pre is not None else None
        return Samples(model.name, model.version, seed, x, z, records, rate, eps)

    def chains(self, model: LoadedModel) -> ChainLoop:
        """The batched MALA loop of `model` (one per model version), made on first use."""
        key = (model.name, model.version)
        loop = self.chain_loops.get(key)
        if loop is None:
            steps = self.metrics.inference_duration.labels(model=model.name, op="mala_step",
                                                           backend="torch")
            chains = self.metrics.batch_size.labels(model=model.name, op="mala")

            def on_step(n_chains: int, seconds: float) -> None:
                steps.observe(seconds)
                chains.observe(n_chains)

            loop = self.chain_loops[key] = ChainLoop(
                model.name, model.generator_pt, model.energy_pt, model.latent_dim,
                model.torch_device, max_chains=self.settings.mcmc_max_chains,
                max_requests=self.settings.mcmc_queue_size, on_step=on_step)
        return loop

    async def _mcmc(self, model: LoadedModel, n: int, seed: int, mcmc: MCMCParams,
                    deadline: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Latent MALA: (z (n, latent), acceptance (n,), final step size). Through the
        model's batched chain loop (the same z as running alone), or with batching off
        alone in the heavy pool, bounded by the mcmc admission class."""
        if not self.settings.mcmc_batching:
            retain_freed_memory()  # as the chain loop does: the same allocator either way
            async with self.admission["mcmc"].slot(deadline):
                return await self.blocking(
                    model.sample_latent_mcmc, n, mcmc.steps, mcmc.step_size, mcmc.temperature,
                    mcmc.prior, mcmc.adapt, seed, self.stop_at(deadline), deadline=deadline,
                    model=model.name, op="mala")
        if self.admission["mcmc"].closing:
            raise Unavailable("shutting_down", "server is shutting down")
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded()
        ticket = self.chains(model).submit(ChainSpec(
            n=n, steps=mcmc.steps, step_size=mcmc.step_size, temperature=mcmc.temperature,
            prior=mcmc.prior, adapt=mcmc.adapt, seed=seed, deadline=self.stop_at(deadline)))
        t0 = time.perf_counter()
        try:
            res = await asyncio.wait_for(asyncio.wrap_future(ticket.future), remaining)
            # One observation per request, as without batching (the steps themselves are
            # op="mala_step").
            self.metrics.inference_duration.labels(model=model.name, op="mala",
                                                   backend="torch").observe(time.perf_counter() - t0)
        except TimeoutError:
            ticket.cancel()
            raise DeadlineExceeded("MCMC") from None
        except asyncio.CancelledError:  # the client went away: its chains leave the batch
            ticket.cancel()
            raise
        return res.z, res.acceptance, res.step_size

    async def energy(self, model: LoadedModel, rows: Rows) -> Energies:
        e = _finite(await self.infer(model, "energy", rows.x, self.deadline()), "energy")
        return Energies(model.name, model.version, e)

    async def encode(self, model: LoadedModel, rows: Rows) -> Latents:
        z = _finite(await self.infer(model, "encode", rows.x, self.deadline()), "latent code")
        return Latents(model.name, model.version, z)

    async def anomaly(self, model: LoadedModel, rows: Rows, threshold: float | None = None,
                      target_fpr: float | None = None, explain: bool = False,
                      top_k: int = 5, score: str | None = None) -> Anomalies:
        """Scores, conformal p-values against the bundle's calibration scores, percentiles
        and flags: p <= target_fpr (default the bundle's), or score >= an explicit
        `threshold` (meg/scoring.py holds both rules); optional explanations from the torch
        gradient of the energy. `score`: "energy", "knn" or "energy+knn" (meg/support.py;
        default: the bundle's default score)."""
        deadline = self.deadline()
        score = model.default_score if score is None else score
        cal = model.calibration(score)
        if cal is None:
            raise InvalidInput("score_unavailable", f"score {score!r}: model {model.name!r} "
                               f"serves {', '.join(model.scores)}", "score")
        if threshold is not None and target_fpr is not None:
            raise InvalidInput("threshold_and_target_fpr",
                               "give at most one of 'threshold' or 'target_fpr'", "target_fpr")
        alpha = None
        if threshold is None:
            alpha = cal.target_fpr if target_fpr is None else float(target_fpr)
            boundary = scoring.score_threshold(cal.array, alpha) if 0.0 < alpha < 1.0 else None
            if boundary is None:
                raise InvalidInput(
                    "target_fpr_out_of_range", f"target_fpr {alpha:g}: model {model.name!r} "
                    f"has {cal.n} calibration scores, so the target must lie in "
                    f"[{scoring.min_alpha(cal.n):.3g}, 1) for any row to be flaggable",
                    "target_fpr")
            threshold = boundary
        scores = _finite(await self.infer(model, "energy", rows.x, deadline), "energy")
        if score != "energy":
            assert model.support is not None  # model.calibration(score) said it is bundled
            scores = await self.blocking(model.support.score, score, scores, rows.x,
                                         deadline=deadline, model=model.name, op="knn",
                                         backend="numpy")
        p_values = scoring.conformal_pvalues(cal.array, scores)
        flags = (scoring.flag(scores, threshold) if alpha is None
                 else scoring.flag_by_pvalue(p_values, alpha))
        explanations = None
        if explain:
            async with self.admission["explain"].slot(deadline):
                grad = await self.blocking(_gradients, model, rows.x, self.stop_at(deadline),
                                           deadline=deadline, model=model.name, op="explain")
            names, groups = column_groups(model, rows.from_records)
            summed = np.zeros((len(rows.x), len(names)), dtype=np.float64)
            np.add.at(summed.T, groups, grad.T.astype(np.float64))  # sum columns per feature
            k = min(top_k, len(names))
            order = np.argsort(-np.abs(summed), axis=1, kind="stable")[:, :k]
            explanations = [[Contribution(names[j], float(summed[r, j])) for j in order[r]]
                            for r in range(len(rows.x))]
        self.metrics.anomaly_scored.labels(model=model.name).inc(len(rows.x))
        self.metrics.anomalies_flagged.labels(model=model.name).inc(int(flags.sum()))
        return Anomalies(model.name, model.version, float(threshold), scores,
                         scoring.percentile_rank(cal.array, scores), flags, explanations,
                         p_values=p_values, target_fpr=alpha, score_name=cal.score,
                         unseen=rows.unseen)

    async def preview(self, model: LoadedModel, n: int, steps: int, seed: int | None) -> bytes:
        """A PNG of `n` samples: image grid, 2-D scatter over energy, or energy histogram."""
        mcmc = None if steps == 0 else MCMCParams(steps=steps)
        res = await self.sample(model, n, seed, mcmc)
        deadline = self.deadline()
        stop_at = self.stop_at(deadline)

        def energy_fn(rows: np.ndarray) -> np.ndarray:
            if time.monotonic() >= stop_at:  # the render's own energy grid: stop there
                raise DeadlineExceeded("render")
            return model.infer("energy", rows)

        async with self.admission["render"].slot(deadline):
            return await self.blocking(preview_png, model.manifest.data, res.samples,
                                       energy_fn, deadline=deadline, model=model.name,
                                       op="render", backend="onnxruntime")
