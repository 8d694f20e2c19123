"""Open Inference Protocol (KServe V2) over HTTP/REST, with the binary tensor extension.

    GET  /v2/health/live, /v2/health/ready       open, like /healthz and /readyz
    GET  /v2                                      server metadata
    GET  /v2/models/{m}[/versions/{v}]            model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready      model readiness
    POST /v2/models/{m}[/versions/{v}]/infer      inference (JSON or binary tensors)

Every route but the two health probes sits behind the API key (service/auth.py). Errors
are the V2 shape ``{"error": "<message>"}``; the engine's errors get their status in
`v2_status` (the one place for V2 over HTTP). Models and tensors: service/v2/core.py.

Binary tensor extension: the body is a JSON header of `Inference-Header-Content-Length`
bytes followed by the raw tensors (little-endian, row-major, BOOL one byte each) of the
inputs whose parameters carry `binary_data_size`, in input order. Outputs come back binary
when the request asks (`parameters.binary_data: true` per output, or the request-level
`binary_data_output: true`); the response is then a JSON header (its length in the
`Inference-Header-Content-Length` response header) followed by those outputs' bytes.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Match
from starlette.types import Message, Scope

from service.auth import guards_api_key, require_api_key
from service.engine import Engine
from service.engine.errors import EngineError
from service.errors import engine_status
from service.middleware import DirectRoute
from service.v2 import core
from service.v2.core import DATATYPES, InferResult, Tensor, V2Model

HEADER_LENGTH = "Inference-Header-Content-Length"


class V2Error(Exception):
    """A V2 request failure: answered as ``{"error": message}`` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def v2_status(exc: EngineError) -> int:
    """HTTP status of an engine error under V2: the native mapping, except that the
    protocol answers every bad request with 400 (the native API says 422)."""
    status = engine_status(exc)
    return 400 if status == 422 else status


def _from_engine(exc: EngineError) -> V2Error:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return V2Error(v2_status(exc), exc.message, headers)


@guards_api_key
async def _v2_api_key(request: Request) -> None:
    """The native API-key check, answering in the V2 error shape."""
    try:
        await require_api_key(request)
    except HTTPException as e:
        raise V2Error(e.status_code, str(e.detail), getattr(e, "headers", None)) from None


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _model(request: Request, name: str, version: str = "") -> V2Model:
    try:
        model = core.resolve(_engine(request), name, version)
    except EngineError as e:
        raise _from_engine(e) from None
    request.state.model = model.bundle.name
    return model


class InferRoute(DirectRoute):
    """The infer routes, answered by the request middleware itself once it has checked
    the key, size and media type and read the body (service/middleware.py DirectRoute):
    the same endpoint, without FastAPI's routing and dependency layers per request."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.direct = True

    async def answer(self, scope: Scope, body: bytes) -> Response | None:
        match, child = self.matches(scope)
        if match is not Match.FULL:
            return None
        scope.update(child)

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            response: Response = await self.endpoint(Request(scope, receive),
                                                     **child["path_params"])
        except V2Error as e:
            return _error_response(e)
        return response


probes = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])
router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"],
                   dependencies=[Depends(_v2_api_key)])
infer = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"],
                  dependencies=[Depends(_v2_api_key)], route_class=InferRoute)


@probes.get("/health/live", summary="V2 server liveness")
async def server_live() -> dict[str, bool]:
    return {"live": True}


@probes.get("/health/ready", summary="V2 server readiness")
async def server_ready(request: Request) -> JSONResponse:
    """200 once a model is loaded (like /readyz), 503 before."""
    ready = _engine(request).ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("", summary="V2 server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return core.server_metadata(request.app.version)


@router.get("/models/{name}", summary="V2 model metadata")
@router.get("/models/{name}/versions/{version}", summary="V2 model metadata (a version)")
async def model_metadata(request: Request, name: str, version: str = "") -> dict[str, Any]:
    return _model(request, name, version).metadata()


@router.get("/models/{name}/ready", summary="V2 model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="V2 model readiness (a version)")
async def model_ready(request: Request, name: str, version: str = "") -> dict[str, Any]:
    """200 when the model is loaded (bundles are warmed up before they are served);
    404 otherwise."""
    model = _model(request, name, version)
    return {"name": model.name, "ready": True}


@infer.post("/models/{name}/infer", summary="V2 inference")
@infer.post("/models/{name}/versions/{version}/infer", summary="V2 inference (a version)")
async def model_infer(request: Request, name: str, version: str = "") -> Response:
    """Inference on JSON tensors or binary ones (binary tensor data extension)."""
    model = _model(request, name, version)
    body = _decoded_body(request, await request.body())
    header, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
    req = _json_object(header)
    inputs = _parse_inputs(req.get("inputs"), binary)
    params = _dict(req.get("parameters"), "parameters")
    try:
        result = await core.infer(_engine(request), model, inputs, params)
    except EngineError as e:
        raise _from_engine(e) from None
    return _infer_response(result, req, params)


# --------------------------------------------------------------------------- decoding


def _decoded_body(request: Request, body: bytes) -> bytes:
    """The body after any Content-Encoding (gzip/deflate, which tritonclient may use),
    never inflated past the server's body limit."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = {"gzip": 31, "deflate": 15}.get(encoding)
    if wbits is None:
        raise V2Error(415, f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    limit = request.app.state.settings.max_body_bytes
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise V2Error(400, f"body is not valid {encoding}: {e}") from None
    if len(out) > limit:
        raise V2Error(413, f"decompressed body over {limit} bytes")
    return out


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise V2Error(400, f"{HEADER_LENGTH}: {header_length!r} is not a length within "
                      f"the body ({len(body)} bytes)")
    n = int(header_length)
    return body[:n], body[n:]


def _json_object(header: bytes) -> dict[str, Any]:
    try:
        req = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        raise V2Error(400, f"request header is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise V2Error(400, "the inference request must be a JSON object")
    return req


def _dict(v: Any, what: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise V2Error(400, f"{what} must be an object")
    return v


def _parse_inputs(raw: Any, binary: bytes) -> list[Tensor]:
    if not isinstance(raw, list) or not raw:
        raise V2Error(400, "'inputs' must be a non-empty list of tensors")
    tensors: list[Tensor] = []
    offset = 0
    for i, t in enumerate(raw):
        where = f"inputs[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise V2Error(400, f"{where} must be an object with a 'name'")
        name = t["name"]
        shape = t.get("shape")
        if (not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise V2Error(400, f"input {name!r}: 'shape' must be a list of sizes >= 0")
        dt = DATATYPES.get(t.get("datatype"))  # type: ignore[arg-type]
        if dt is None:
            raise V2Error(400, f"input {name!r}: datatype {t.get('datatype')!r} is not one of "
                          f"{', '.join(DATATYPES)}")
        count = math.prod(shape)
        size = _dict(t.get("parameters"), f"input {name!r} parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * dt.itemsize:
                raise V2Error(400, f"input {name!r}: binary_data_size {size!r} does not fit "
                              f"shape {shape} of {t['datatype']} ({count * dt.itemsize} bytes)")
            if offset + size > len(binary):
                raise V2Error(400, f"input {name!r}: the body ends before its "
                              f"{size} bytes of binary data")
            chunk = binary[offset:offset + size]
            offset += size
            a = np.frombuffer(chunk, dtype=dt.newbyteorder("<")).astype(dt)
        else:
            a = _json_data(t.get("data"), dt, name)
            if a.size != count:
                raise V2Error(400, f"input {name!r}: {a.size} values for shape {shape}")
        tensors.append(Tensor(name, a.reshape(shape)))
    if offset != len(binary):
        raise V2Error(400, f"{len(binary) - offset} bytes of binary data belong to no input "
                      "(each binary input needs parameters.binary_data_size)")
    return tensors


def _json_data(data: Any, dt: np.dtype[Any], name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise V2Error(400, f"input {name!r}: 'data' must be a list (or send binary data)")
    try:
        a = np.asarray(data)
    except ValueError:
        raise V2Error(400, f"input {name!r}: 'data' is not a regular array") from None
    # JSON values must already be of the declared kind: no strings, no 1.5 for an integer
    # (numpy would truncate it), no booleans for numbers. Floats stay float64 here so that
    # values beyond float32's range are caught as such (by the engine's row checks).
    allowed = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}[dt.kind]
    if a.size and a.dtype.kind not in allowed:
        raise V2Error(400, f"input {name!r}: 'data' holds values that are not "
                      f"{_name_of(dt)}")
    if a.size and dt.kind in "iu":
        info = np.iinfo(dt)
        if int(a.min()) < info.min or int(a.max()) > info.max:
            raise V2Error(400, f"input {name!r}: values do not fit {_name_of(dt)}")
    return a.reshape(-1).astype(np.float64 if dt.kind == "f" else dt)


def _name_of(dt: np.dtype[Any]) -> str:
    return next(k for k, v in DATATYPES.items() if v == dt)


# --------------------------------------------------------------------------- encoding


def _wanted_outputs(result: InferResult, req: dict[str, Any],
                    params: dict[str, Any]) -> list[tuple[Tensor, bool]]:
    """(tensor, binary?) for each output to return: the requested ones in request order,
    else all of them."""
    default_binary = params.get("binary_data_output") is True
    by_name = {t.name: t for t in result.outputs}
    requested = req.get("outputs")
    if requested is None:
        return [(t, default_binary) for t in result.outputs]
    if not isinstance(requested, list):
        raise V2Error(400, "'outputs' must be a list")
    out: list[tuple[Tensor, bool]] = []
    for i, o in enumerate(requested):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise V2Error(400, f"outputs[{i}] must be an object with a 'name'")
        t = by_name.get(o["name"])
        if t is None:
            raise V2Error(400, f"model {result.model.name!r} has no output {o['name']!r} "
                          f"(outputs: {', '.join(s.name for s in result.model.outputs)})")
        binary = _dict(o.get("parameters"), f"output {o['name']!r} parameters").get(
            "binary_data", default_binary)
        out.append((t, binary is True))
    return out


def _infer_response(result: InferResult, req: dict[str, Any],
                    params: dict[str, Any]) -> Response:
    outputs = _wanted_outputs(result, req, params)
    body: dict[str, Any] = {"model_name": result.model.name,
                            "model_version": result.model.version, "outputs": []}
    if isinstance(req.get("id"), str):
        body["id"] = req["id"]
    if result.parameters:
        body["parameters"] = result.parameters
    chunks: list[bytes] = []
    for t, binary in outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype,
                                 "shape": list(t.data.shape)}
        if binary:
            raw = t.data.astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = t.data.reshape(-1)
        body["outputs"].append(entry)
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


def _error_response(exc: V2Error) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _v2_error_handler(request: Request, exc: V2Error) -> JSONResponse:
    return _error_response(exc)


def install(app: FastAPI) -> None:
    """Serve the V2 REST routes on `app` (and answer their errors in the V2 shape)."""
    app.add_exception_handler(V2Error, _v2_error_handler)  # type: ignore[arg-type]
    app.include_router(probes)
    app.include_router(router)
    app.include_router(infer)
