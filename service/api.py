"""HTTP routes. Thin: parse (schemas), run (the engine), shape the answer. The engine's
errors become HTTP statuses in service/errors.py.

Every route but /healthz, /readyz and /metrics needs an API key when keys are configured
(the `api` router's KeyedRoute, service/middleware.py). The hot routes take the engine
from the app state rather than through a dependency: FastAPI resolves dependencies on
every request (bench/profile_energy.py). Those marked `answers_directly` (/energy,
/encode, /sample) are answered by the request middleware itself when their body
validates (DirectRoute): same endpoint, same answer, without FastAPI's per-request layers.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from meg import scoring
from service.engine import Engine
from service.engine.models import LoadedModel
from service.engine.results import MCMCParams
from service.metrics import CONTENT_TYPE
from service.middleware import DirectRoute, answers_directly
from service.schemas import (
    AnomalyRequest,
    AnomalyResponse,
    CalibrationSummary,
    EncodeRequest,
    EncodeResponse,
    EnergyRequest,
    EnergyResponse,
    ErrorBody,
    Health,
    ModelDetail,
    ModelList,
    ModelSummary,
    Readiness,
    SampleRequest,
    SampleResponse,
)


async def get_engine(request: Request) -> Engine:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
    # hop per request for a getattr (bench/profile_energy.py measures it).
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc} for code, desc in {
        400: "malformed JSON", 401: "missing or invalid API key", 404: "unknown model",
        413: "body too large", 415: "body is not application/json",
        422: "invalid input (the field says where)", 503: "queue full or no model loaded",
        504: "deadline exceeded"}.items()}

api = APIRouter(responses=_ERRORS, route_class=DirectRoute)
probes = APIRouter()


def _use(request: Request, engine: Engine, name: str | None) -> LoadedModel:
    """Resolve the model and label this request's metrics and logs with it."""
    model = engine.resolve(name)
    request.state.model = model.name
    return model


def _tolist(a: np.ndarray) -> list[Any]:
    return np.asarray(a, dtype=np.float64).tolist()


def _array_json(out: dict[str, Any]) -> Response:
    """JSON for array-heavy answers, serialised by orjson straight from numpy: the
    declared response_model documents the shape, but validating and encoding 10^5 floats
    through pydantic and json.dumps costs far more than computing them."""
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


@api.post("/sample", response_model=SampleResponse, response_model_exclude_none=True,
          summary="Generate samples",
          responses={200: {"content": {"application/octet-stream": {}}}})
@answers_directly
async def create_samples(body: SampleRequest, request: Request) -> Response:
    """Draw `n` samples. Without `mcmc`, z ~ N(0, I) through the generator; with it, latent
    MALA first. Same `seed`, same samples. Rows are in model space (for tabular models:
    scaled numbers and one-hot blocks; ask for `return_records` to get raw records).

    With `Accept: application/octet-stream` the body is the samples alone as raw
    little-endian float32, row-major, shape in `X-Meg-Shape` (JSON of many floats costs far
    more than generating them)."""
    engine = _engine(request)
    model = _use(request, engine, body.model)
    mcmc = MCMCParams(**body.mcmc.model_dump()) if body.mcmc else None
    res = await engine.sample(model, body.n, body.seed, mcmc, body.return_records)
    if "application/octet-stream" in request.headers.get("accept", ""):
        x = np.ascontiguousarray(res.samples, dtype="<f4")
        headers = {"X-Meg-Shape": ",".join(map(str, x.shape)), "X-Meg-Model": res.model,
                   "X-Meg-Version": res.version, "X-Meg-Seed": str(res.seed)}
        if res.acceptance_rate is not None:
            headers["X-Meg-Acceptance-Rate"] = repr(res.acceptance_rate)
        return Response(x.tobytes(), media_type="application/octet-stream", headers=headers)
    out: dict[str, Any] = {"model": res.model, "version": res.version, "seed": res.seed,
                           "samples": _f32(res.samples)}
    if body.return_latent:
        out["latent"] = _f32(res.latent)
    if res.records is not None:
        out["records"] = res.records
    if res.acceptance_rate is not None:
        out["acceptance_rate"], out["step_size"] = res.acceptance_rate, res.step_size
    return _array_json(out)


@api.post("/energy", response_model=EnergyResponse, summary="Energies of inputs")
@answers_directly
async def score_energy(body: EnergyRequest, request: Request) -> Response:
    """E(x) for each row (lower = more typical). `inputs` are model-space rows; `records`
    go through the bundle's preprocessing."""
    engine = _engine(request)
    model = _use(request, engine, body.model)
    res = await engine.energy(model, engine.rows(model, body.inputs, body.records))
    return _array_json({"model": res.model, "version": res.version,
                        "energies": _f32(res.energies)})


@api.post("/anomaly", response_model=AnomalyResponse, response_model_exclude_none=True,
          summary="Score and flag anomalies")
async def detect_anomalies(body: AnomalyRequest, request: Request) -> dict[str, Any]:
    """score = `score` (energy, knn or energy+knn; default: the bundle's); p_value =
    conformal p-value against that score's calibration scores (held-out normal rows); flagged when p_value <= target_fpr (default the bundle's), so
    at most a share target_fpr of normal rows is flagged; or, given `threshold`, when
    score >= threshold. Records with a category training never saw are scored (all-zero
    one-hot block) and list the feature in `unseen`, unless `unknown_category` is
    "error". `explain` adds the features with the largest |dE/dx| (one-hot columns of a
    record feature summed)."""
    engine = _engine(request)
    model = _use(request, engine, body.model)
    rows = engine.rows(model, body.inputs, body.records, body.unknown_category)
    res = await engine.anomaly(model, rows, body.threshold, body.target_fpr, body.explain,
                               body.top_k, score=body.score)
    assert res.p_values is not None
    results: list[dict[str, Any]] = [
        {"score": float(s), "p_value": float(pv), "percentile": float(p), "is_anomaly": bool(f)}
        for s, pv, p, f in zip(res.scores, res.p_values, res.percentiles, res.flags,
                               strict=True)]
    if res.unseen is not None:
        for r, unseen in zip(results, res.unseen, strict=True):
            if unseen:
                r["unseen"] = unseen
    if res.explanations is not None:
        for r, contributions in zip(results, res.explanations, strict=True):
            r["explanation"] = [asdict(c) for c in contributions]
    return {"model": res.model, "version": res.version, "score": res.score_name,
            "target_fpr": res.target_fpr, "threshold": res.threshold, "results": results}


@api.post("/encode", response_model=EncodeResponse, summary="Latent codes of inputs")
@answers_directly
async def encode_inputs(body: EncodeRequest, request: Request) -> Response:
    """The encoder's z for each row."""
    engine = _engine(request)
    model = _use(request, engine, body.model)
    res = await engine.encode(model, engine.rows(model, body.inputs, body.records))
    return _array_json({"model": res.model, "version": res.version, "latent": _f32(res.latent)})


@api.get("/sample.png", response_class=Response, summary="A picture of samples",
         responses={200: {"content": {"image/png": {}}}})
async def render_samples(
    request: Request, engine: EngineDep,
    model: Annotated[str | None, Query(description="bundle name")] = None,
    n: Annotated[int, Query(ge=1, le=4096)] = 64,
    mcmc_steps: Annotated[int, Query(ge=0)] = 0,
    seed: Annotated[int | None, Query(ge=0, lt=2**63)] = None,
) -> Response:
    """Image grid (image models), samples over energy contours (2-D models) or energy
    histogram (others)."""
    png = await engine.preview(_use(request, engine, model), n, mcmc_steps, seed)
    return Response(png, media_type="image/png")


@api.get("/models", response_model=ModelList, summary="Loaded and failed models")
async def list_models(engine: EngineDep) -> dict[str, Any]:
    reg = engine.registry
    return {"default": reg.default_name,
            "models": [ModelSummary(**m.summary()) for _, m in sorted(reg.models.items())],
            "failed": dict(sorted(reg.failed.items()))}


@api.get("/models/{name}", response_model=ModelDetail, summary="One model in detail")
async def get_model(name: str, request: Request, engine: EngineDep) -> dict[str, Any]:
    model = _use(request, engine, name)
    man = model.manifest
    cal = man.calibration
    pcts = {str(p): float(np.percentile(cal.array, p)) for p in (50, 90, 95, 99)}
    default_threshold = scoring.score_threshold(cal.array, cal.target_fpr)
    pre = man.preprocessing
    return {
        **model.summary(),
        "shape": man.data.shape, "feature_names": man.data.feature_names,
        "input_features": [{"name": f.name, "kind": f.kind, "categories": f.categories or None}
                           for f in pre.features] if pre else None,
        "value_range": man.data.value_range, "metrics": man.metrics,
        "unknown_category": pre.unknown_category if pre else None,
        "calibration": CalibrationSummary(
            score=cal.score, n=cal.n, source=cal.source, target_fpr=cal.target_fpr,
            min_target_fpr=scoring.min_alpha(cal.n),
            default_threshold=default_threshold,
            percentiles=pcts),
        "scores": model.scores, "default_score": model.default_score,
        "recipe": man.recipe, "created": man.created, "path": str(model.path),
    }


@probes.get("/healthz", response_model=Health, summary="Liveness")
async def check_health() -> dict[str, str]:
    """200 while the process serves HTTP (models or not)."""
    return {"status": "ok"}


@probes.get("/readyz", response_model=Readiness, summary="Readiness",
            responses={503: {"model": Readiness}})
async def check_ready(engine: EngineDep) -> JSONResponse:
    """200 once at least one model is loaded and warmed up; 503 before."""
    names = sorted(engine.registry.models)
    if engine.ready:
        return JSONResponse({"status": "ready", "models": names})
    return JSONResponse({"status": "loading" if not engine.started else "no models",
                         "models": names}, status_code=503)


@probes.get("/models/{name}/ready", summary="Readiness of one model",
            responses={503: {"description": "failed or still loading"},
                       404: {"description": "unknown model"}})
async def check_model_ready(name: str, engine: EngineDep) -> JSONResponse:
    """200 when `name` is loaded and serving; 503 while it loads or when it failed (the
    reason names the file at fault); 404 when no such bundle is known. Open, like /readyz."""
    st = engine.registry.status(name)
    body = {k: v for k, v in asdict(st).items() if v is not None}
    code = {"ready": 200, "loading": 503, "failed": 503}.get(st.status, 404)
    return JSONResponse(body, status_code=code)


@probes.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def get_metrics(engine: EngineDep) -> Response:
    """Prometheus text exposition. Open (no API key): scraped from inside the network."""
    return Response(engine.metrics.exposition(), media_type=CONTENT_TYPE)
