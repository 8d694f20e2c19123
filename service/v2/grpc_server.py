"""Open Inference Protocol (KServe V2) over gRPC: GRPCInferenceService (ServerLive,
ServerReady, ServerMetadata, ModelMetadata, ModelReady, ModelInfer) on a grpc.aio server
that runs on the app's event loop and shares its one Engine (started and stopped in the
lifespan, service/main.py, when MEG_GRPC_PORT is set).

Tensors arrive in `raw_input_contents` (little-endian, row-major; what Triton's client
sends) or in typed `contents`; outputs always go back in `raw_output_contents`. The
engine's errors become gRPC status codes in GRPC_STATUS, the one place for gRPC. Every
RPC but ServerLive and ServerReady needs the API key (metadata `x-api-key: KEY` or
`authorization: Bearer KEY`) when MEG_API_KEYS is set.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from service.auth import _matches as matches_any  # the HTTP API's constant-time check
from service.engine import Engine
from service.engine.errors import (
    DeadlineExceeded,
    EngineError,
    InvalidInput,
    ModelNotFound,
    Unavailable,
)
from service.logs import access_log
from service.v2 import core
from service.v2.core import DATATYPES, Tensor
from service.v2.descriptor import SERVICE, Messages

log = logging.getLogger("service.v2.grpc")
# The model a call resolved (each RPC runs in its own task): its metrics' `model` label.
_call_model: contextvars.ContextVar[str] = contextvars.ContextVar("grpc_model", default="")

# The engine's domain errors as gRPC status codes: the one place this mapping lives.
GRPC_STATUS: dict[type[EngineError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Typed `contents` field per datatype (FP16 has none: raw contents only).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}

M = Messages()


def grpc_status(exc: EngineError) -> grpc.StatusCode:
    return next((c for cls, c in GRPC_STATUS.items() if isinstance(exc, cls)),
                grpc.StatusCode.INTERNAL)


def _bad(message: str, field: str | None = None) -> InvalidInput:
    return InvalidInput("invalid_tensor", message, field)


def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _set_param(p: Any, value: Any) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


def decode_inputs(request: Any) -> list[Tensor]:
    """The request's tensors: from raw_input_contents (one per input, in order) or from
    each input's typed contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise _bad(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs "
                   "(give every input's data raw, or none)")
    tensors = []
    for i, t in enumerate(request.inputs):
        dt = DATATYPES.get(t.datatype)
        if dt is None:
            raise _bad(f"input {t.name!r}: datatype {t.datatype!r} is not one of "
                       f"{', '.join(DATATYPES)}", t.name)
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise _bad(f"input {t.name!r}: shape {shape} has a negative size", t.name)
        count = math.prod(shape)
        if raw:
            if len(raw[i]) != count * dt.itemsize:
                raise _bad(f"input {t.name!r}: {len(raw[i])} raw bytes for shape {shape} of "
                           f"{t.datatype} ({count * dt.itemsize} bytes)", t.name)
            a = np.frombuffer(raw[i], dtype=dt.newbyteorder("<")).astype(dt)
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise _bad(f"input {t.name!r}: send {t.datatype} in raw_input_contents",
                           t.name)
            values = getattr(t.contents, field)
            if len(values) != count:
                raise _bad(f"input {t.name!r}: {len(values)} values for shape {shape}", t.name)
            try:
                a = np.asarray(values, dtype=dt)
            except OverflowError:
                raise _bad(f"input {t.name!r}: values do not fit {t.datatype}",
                           t.name) from None
        tensors.append(Tensor(t.name, a.reshape(shape)))
    return tensors


def encode_response(result: core.InferResult, request: Any) -> Any:
    """The response: requested outputs (all when none are named) in raw_output_contents."""
    by_name = {t.name: t for t in result.outputs}
    names = [o.name for o in request.outputs] or [t.name for t in result.outputs]
    resp = M.ModelInferResponse(model_name=result.model.name,
                                model_version=result.model.version, id=request.id)
    for name in names:
        t = by_name.get(name)
        if t is None:
            raise _bad(f"model {result.model.name!r} has no output {name!r} (outputs: "
                       f"{', '.join(s.name for s in result.model.outputs)})", name)
        # Metadata only: the data goes in raw_output_contents, in the same order.
        resp.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.data.shape))
        resp.raw_output_contents.append(
            t.data.astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes())
    for k, v in result.parameters.items():
        _set_param(resp.parameters[k], v)
    return resp


class InferenceService:
    """The RPC handlers over one engine."""

    def __init__(self, engine: Engine, version: str, api_keys: list[str]):
        self.engine = engine
        self.version = version
        self.api_keys = api_keys

    def _authorized(self, context: grpc.aio.ServicerContext) -> bool:
        if not self.api_keys:
            return True
        md = {k.lower(): v for k, v in (context.invocation_metadata() or ())
              if isinstance(v, str)}
        candidate = md.get("x-api-key")
        if candidate is None:
            scheme, _, token = md.get("authorization", "").partition(" ")
            candidate = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        return candidate is not None and matches_any(candidate, self.api_keys)

    async def server_live(self, request: Any, context: Any) -> Any:
        return M.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return M.ServerReadyResponse(ready=self.engine.ready)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        meta = core.server_metadata(self.version)
        return M.ServerMetadataResponse(**meta)

    def _resolve(self, name: str, version: str) -> core.V2Model:
        """The model, named in this call's metrics and access line."""
        model = core.resolve(self.engine, name, version)
        _call_model.set(model.bundle.name)
        return model

    async def model_ready(self, request: Any, context: Any) -> Any:
        try:
            self._resolve(request.name, request.version)
        except (ModelNotFound, InvalidInput):
            return M.ModelReadyResponse(ready=False)
        return M.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: Any, context: Any) -> Any:
        model = self._resolve(request.name, request.version)
        meta = model.metadata()
        return M.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[M.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[M.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]])

    async def model_infer(self, request: Any, context: Any) -> Any:
        model = self._resolve(request.model_name, request.model_version)
        params = {k: _param_value(v) for k, v in request.parameters.items()}
        result = await core.infer(self.engine, model, decode_inputs(request), params)
        return encode_response(result, request)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler of inference.GRPCInferenceService."""
        open_rpcs = {"ServerLive", "ServerReady"}
        rpcs: dict[str, tuple[Callable[[Any, Any], Awaitable[Any]], Any, Any]] = {
            "ServerLive": (self.server_live, M.ServerLiveRequest, M.ServerLiveResponse),
            "ServerReady": (self.server_ready, M.ServerReadyRequest, M.ServerReadyResponse),
            "ServerMetadata": (self.server_metadata, M.ServerMetadataRequest,
                               M.ServerMetadataResponse),
            "ModelReady": (self.model_ready, M.ModelReadyRequest, M.ModelReadyResponse),
            "ModelMetadata": (self.model_metadata, M.ModelMetadataRequest,
                              M.ModelMetadataResponse),
            "ModelInfer": (self.model_infer, M.ModelInferRequest, M.ModelInferResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._guarded(name, fn, name not in open_rpcs),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString)
            for name, (fn, req, resp) in rpcs.items()}
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _guarded(self, name: str, fn: Callable[[Any, Any], Awaitable[Any]],
                 needs_key: bool) -> Callable[[Any, Any], Awaitable[Any]]:
        """`fn` with the API-key check, errors as gRPC status codes, and the call counted
        (meg_grpc_requests_total, meg_grpc_request_duration_seconds) and logged (one access
        line, as HTTP requests get; the health RPCs at DEBUG, like /healthz)."""
        metrics = self.engine.metrics
        level = logging.DEBUG if name in ("ServerLive", "ServerReady") else logging.INFO

        async def call(request: Any, context: Any) -> Any:
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK
            token = _call_model.set("")
            try:
                if needs_key and not self._authorized(context):
                    code = grpc.StatusCode.UNAUTHENTICATED
                    await context.abort(code, "missing or invalid API key (metadata "
                                        "x-api-key: KEY or authorization: Bearer KEY)")
                try:
                    return await fn(request, context)
                except EngineError as e:
                    code = grpc_status(e)
                    await context.abort(code, e.message)
                except Exception:
                    code = grpc.StatusCode.INTERNAL
                    log.exception("gRPC %s failed", name)
                    await context.abort(code, "internal server error")
            finally:
                seconds = time.perf_counter() - t0
                model = _call_model.get()
                _call_model.reset(token)
                metrics.grpc_requests.labels(name, model, code.name).inc()
                metrics.grpc_duration.labels(name, model).observe(seconds)
                if access_log.logger.isEnabledFor(level):
                    access_log.write(level, f"gRPC {name} {code.name}", method="gRPC", path=name,
                                 status=code.value[0], duration_ms=round(seconds * 1000.0, 3),
                                 model=model)

        return call


class GrpcFrontend:
    """The gRPC server of one app: start() in the lifespan, stop() before the engine
    closes."""

    def __init__(self, engine: Engine, version: str, api_keys: list[str],
                 max_message_bytes: int):
        self.service = InferenceService(engine, version, api_keys)
        self.max_message_bytes = max_message_bytes
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (insecure: put TLS in front, like the HTTP port) and return
        the bound port."""
        # The HTTP body limit bounds requests here too; answers may be larger (samples).
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", 256 * 1024 * 1024)])
        server.add_generic_rpc_handlers((self.service.handler(),))
        self.port = server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"gRPC could not listen on {host}:{port}")
        await server.start()
        self.server = server
        log.info("gRPC (Open Inference Protocol) on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs and give running ones `grace_s` seconds."""
        if self.server is not None:
            await self.server.stop(grace_s)
            self.server = None
