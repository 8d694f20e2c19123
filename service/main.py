"""The FastAPI application. `uvicorn service.main:app` serves the module-level `app`
(settings from the environment); tests and `meg serve` call `create_app(settings)`.

Run ONE process per replica (no `--workers`): batch queues and metrics live in the
process, so scale out with replicas behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.routing import BaseRoute

from meg.threads import auto_threads
from service.api import api, probes
from service.engine import Engine
from service.errors import install_error_handlers
from service.logs import access_log, setup_logging
from service.metrics import Metrics
from service.middleware import RequestMiddleware
from service.settings import Settings, get_settings
from service.v2 import rest as v2_rest
from service.v2.grpc_server import GrpcFrontend

log = logging.getLogger("service.main")

DESCRIPTION = """Serve Maximum Entropy Generator bundles: sample, score energies, flag
anomalies, encode. Errors are `{"error": {"code", "message", "field"}}`. See docs/service.md."""

# The API-key schemes as OpenAPI declares them (Swagger UI's Authorize button, client
# generators). Declarations only: service/auth.py decides, per request, whether a key is
# needed and whether it is valid; tests/service/test_docs.py checks the two agree.
API_KEY_SCHEMES: dict[str, dict[str, str]] = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "`Authorization: Bearer <key>`, one of MEG_API_KEYS"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "`X-API-Key: <key>`, one of MEG_API_KEYS"},
}


def declare_api_keys(schema: dict[str, Any], open_routes: Iterable[BaseRoute],
                     required: bool) -> dict[str, Any]:
    """Add API_KEY_SCHEMES to an OpenAPI document and list them as the alternatives on
    every operation but those of `open_routes` (probes and metrics). Without configured
    keys (`required` false) the empty requirement `{}` joins them: the key is optional.
    New operations are protected by default, as routes on the `api` router are."""
    schema.setdefault("components", {})["securitySchemes"] = API_KEY_SCHEMES
    security: list[dict[str, list[str]]] = [{name: []} for name in API_KEY_SCHEMES]
    if not required:
        security.append({})
    open_ops = {(r.path_format, m.lower()) for r in open_routes if isinstance(r, APIRoute)
                for m in r.methods or ()}
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            if (path, method) not in open_ops:
                op["security"] = security
    return schema


# /docs (Swagger UI) and /redoc load their scripts, styles and icon from DOCS_ASSETS on
# this server (files of the fastapi-offline package), never from a CDN: they work on an
# air-gapped network. No validator badge: Swagger UI would send the document's URL to
# validator.swagger.io. Keys entered under Authorize survive a page reload.
DOCS_ASSETS = "/docs/assets"
DOCS: dict[str, Any] = {
    "docs_url": "/docs", "redoc_url": "/redoc", "static_url": DOCS_ASSETS,
    "swagger_ui_parameters": {"validatorUrl": None, "persistAuthorization": True},
}


def _openapi_with_api_keys(app: FastAPI, required: bool) -> Callable[[], dict[str, Any]]:
    generate = app.openapi  # FastAPI's own: builds the document once and caches it

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            declare_api_keys(generate(), [*probes.routes, *v2_rest.probes.routes], required)
        assert app.openapi_schema is not None
        return app.openapi_schema

    return openapi


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Bundles load in the lifespan (before the first request is served);
    with none present the server still starts and a background task keeps polling."""
    settings = settings or get_settings()
    setup_logging(settings.log_level)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # 0: the CPUs this process may use (cgroup quota, affinity), not the host's cores.
        threads = auto_threads(settings.torch_threads)
        torch.set_num_threads(threads.threads)
        log.info("torch threads: %s", threads.reason)
        engine = Engine(settings, metrics)
        app.state.engine = engine
        log.info("loading bundles from %s", settings.models_dir)
        await engine.load()
        engine.started = True
        if not engine.registry.models:
            log.warning("no bundle loaded from %s; polling every %.1fs", settings.models_dir,
                        settings.poll_interval_s)
        poller = asyncio.create_task(engine.poll(), name="meg-poll-models")
        grpc_frontend = None
        if settings.grpc_port:  # V2 gRPC on this loop, over the same engine
            grpc_frontend = GrpcFrontend(engine, app.version, settings.api_key_list,
                                         settings.max_body_bytes)
            app.state.grpc_port = await grpc_frontend.start(settings.host, settings.grpc_port)
        # Everything alive now (bundles loaded and warmed up, torch and ONNX Runtime) moves
        # out of the garbage collector's reach: otherwise every full collection walks the
        # whole heap, milliseconds that stall every request in flight (bench/serve.py
        # --only peers: p99 96 -> 25 ms, +30% req/s). Young generations first (cheap).
        gc.collect(1)
        gc.freeze()
        try:
            yield
        finally:
            if grpc_frontend is not None:  # no new RPCs; running ones get the grace period
                await grpc_frontend.stop(settings.grace_s)
            # uvicorn has stopped accepting and waited for in-flight requests (up to
            # timeout_graceful_shutdown); drain what is still queued, then stop.
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await engine.close()
            access_log.flush()
            log.info("shut down")

    app = FastAPIOffline(title="meg model server", version="0.1.0", description=DESCRIPTION,
                         lifespan=lifespan, **DOCS)
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(probes)
    app.include_router(api)
    v2_rest.install(app)  # Open Inference Protocol (V2) over REST
    app.openapi = _openapi_with_api_keys(app, required=bool(settings.api_key_list))  # type: ignore[method-assign]
    # The middleware sees the router so that it rejects what it can (API key, size, media
    # type) from the headers alone, before any body byte is read.
    app.add_middleware(RequestMiddleware, metrics=metrics,  # type: ignore[arg-type]
                       max_body_bytes=settings.max_body_bytes, router=app.router,
                       api_keys=settings.api_key_list, body_timeout_s=settings.body_timeout_s)
    return app


app = create_app()
