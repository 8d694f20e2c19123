"""HTTP routes. Thin: parse (schemas), check (Service), run (Service), shape the answer.

Every route but /healthz, /readyz and /metrics depends on `require_api_key`.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from service import scoring
from service.auth import require_api_key
from service.core import Service, decode_records
from service.errors import ApiError
from service.metrics import CONTENT_TYPE
from service.models import LoadedModel
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


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc} for code, desc in {
        400: "malformed JSON", 401: "missing or invalid API key", 404: "unknown model",
        413: "body too large", 415: "body is not application/json",
        422: "invalid input (the field says where)", 503: "queue full or no model loaded",
        504: "deadline exceeded"}.items()}

api = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)
probes = APIRouter()


def _use(request: Request, service: Service, name: str | None) -> LoadedModel:
    """Resolve the model and label this request's metrics and logs with it."""
    model = service.resolve(name)
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
async def create_samples(body: SampleRequest, request: Request,
                         service: ServiceDep) -> dict[str, Any] | Response:
    """Draw `n` samples. Without `mcmc`, z ~ N(0, I) through the generator; with it, latent
    MALA first. Same `seed`, same samples. Rows are in model space (for tabular models:
    scaled numbers and one-hot blocks; ask for `return_records` to get raw records).

    With `Accept: application/octet-stream` the body is the samples alone as raw
    little-endian float32, row-major, shape in `X-Meg-Shape` (JSON of many floats costs far
    more than generating them)."""
    model = _use(request, service, body.model)
    service.check_n(body.n, body.mcmc.steps if body.mcmc else None)
    if body.return_records and model.manifest.preprocessing is None:
        raise ApiError(422, "records_not_supported", f"model {model.name!r} has no preprocessing",
                       "return_records")
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    res = await service.sample(model, body.n, seed, body.mcmc.model_dump() if body.mcmc else None)
    if "application/octet-stream" in request.headers.get("accept", ""):
        x = np.ascontiguousarray(res["samples"], dtype="<f4")
        headers = {"X-Meg-Shape": ",".join(map(str, x.shape)), "X-Meg-Model": model.name,
                   "X-Meg-Version": model.version, "X-Meg-Seed": str(seed)}
        if body.mcmc is not None:
            headers["X-Meg-Acceptance-Rate"] = repr(res["acceptance_rate"])
        return Response(x.tobytes(), media_type="application/octet-stream", headers=headers)
    out: dict[str, Any] = {"model": model.name, "version": model.version, "seed": seed,
                           "samples": _f32(res["samples"])}
    if body.return_latent:
        out["latent"] = _f32(res["latent"])
    if body.return_records and model.manifest.preprocessing is not None:
        out["records"] = decode_records(model.manifest.preprocessing, res["samples"])
    if body.mcmc is not None:
        out["acceptance_rate"], out["step_size"] = res["acceptance_rate"], res["step_size"]
    return _array_json(out)


@api.post("/energy", response_model=EnergyResponse, summary="Energies of inputs")
async def score_energy(body: EnergyRequest, request: Request, service: ServiceDep) -> Response:
    """E(x) for each row (lower = more typical). `inputs` are model-space rows; `records`
    go through the bundle's preprocessing."""
    model = _use(request, service, body.model)
    x = service.rows(model, body.inputs, body.records)
    e = await service.energy(model, x)
    return _array_json({"model": model.name, "version": model.version, "energies": _f32(e)})


@api.post("/anomaly", response_model=AnomalyResponse, response_model_exclude_none=True,
          summary="Score and flag anomalies")
async def detect_anomalies(body: AnomalyRequest, request: Request,
                           service: ServiceDep) -> dict[str, Any]:
    """score = energy; percentile among normal calibration data; flagged at or above the
    threshold (given, or from `contamination`, default the bundle's). `explain` adds the
    features with the largest |dE/dx| (one-hot columns of a record feature summed)."""
    model = _use(request, service, body.model)
    x = service.rows(model, body.inputs, body.records)
    threshold, results = await service.anomaly(model, x, body.threshold, body.contamination,
                                               body.explain, body.top_k, body.records is not None)
    return {"model": model.name, "version": model.version, "threshold": threshold,
            "results": results}


@api.post("/encode", response_model=EncodeResponse, summary="Latent codes of inputs")
async def encode_inputs(body: EncodeRequest, request: Request, service: ServiceDep) -> Response:
    """The encoder's z for each row."""
    model = _use(request, service, body.model)
    x = service.rows(model, body.inputs, body.records)
    z = await service.encode(model, x)
    return _array_json({"model": model.name, "version": model.version, "latent": _f32(z)})


@api.get("/sample.png", response_class=Response, summary="A picture of samples",
         responses={200: {"content": {"image/png": {}}}})
async def render_samples(
    request: Request, service: ServiceDep,
    model: Annotated[str | None, Query(description="bundle name")] = None,
    n: Annotated[int, Query(ge=1, le=4096)] = 64,
    mcmc_steps: Annotated[int, Query(ge=0)] = 0,
    seed: Annotated[int | None, Query(ge=0, lt=2**63)] = None,
) -> Response:
    """Image grid (image models), samples over energy contours (2-D models) or energy
    histogram (others)."""
    m = _use(request, service, model)
    service.check_n(n, mcmc_steps or None)
    png = await service.preview(m, n, mcmc_steps, seed if seed is not None else secrets.randbits(63))
    return Response(png, media_type="image/png")


@api.get("/models", response_model=ModelList, summary="Loaded and failed models")
async def list_models(service: ServiceDep) -> dict[str, Any]:
    reg = service.registry
    return {"default": reg.default_name,
            "models": [ModelSummary(**m.summary()) for _, m in sorted(reg.models.items())],
            "failed": dict(sorted(reg.failed.items()))}


@api.get("/models/{name}", response_model=ModelDetail, summary="One model in detail")
async def get_model(name: str, request: Request, service: ServiceDep) -> dict[str, Any]:
    model = _use(request, service, name)
    man = model.manifest
    cal = man.calibration
    pcts = {str(p): float(np.interp(p, cal.percentiles, cal.values)) for p in (50, 90, 95, 99)}
    pre = man.preprocessing
    return {
        **model.summary(),
        "shape": man.data.shape, "feature_names": man.data.feature_names,
        "input_features": [{"name": f.name, "kind": f.kind, "categories": f.categories or None}
                           for f in pre.features] if pre else None,
        "value_range": man.data.value_range, "metrics": man.metrics,
        "calibration": CalibrationSummary(
            n=cal.n, contamination=cal.contamination,
            default_threshold=scoring.threshold_from_calibration(cal), percentiles=pcts),
        "recipe": man.recipe, "created": man.created, "path": str(model.path),
    }


@probes.get("/healthz", response_model=Health, summary="Liveness")
async def check_health() -> dict[str, str]:
    """200 while the process serves HTTP (models or not)."""
    return {"status": "ok"}


@probes.get("/readyz", response_model=Readiness, summary="Readiness",
            responses={503: {"model": Readiness}})
async def check_ready(service: ServiceDep) -> JSONResponse:
    """200 once at least one model is loaded and warmed up; 503 before."""
    names = sorted(service.registry.models)
    if service.ready:
        return JSONResponse({"status": "ready", "models": names})
    return JSONResponse({"status": "loading" if not service.started else "no models",
                         "models": names}, status_code=503)


@probes.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def get_metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition. Open (no API key): scraped from inside the network."""
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)
