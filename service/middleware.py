"""The HTTP middleware (plain ASGI, so it sees every request, errors included):

* request id: accepts a safe `X-Request-ID` or makes one, returns it, tags every log line;
* cheap rejection first, from the headers alone and before any body byte is read: 401
  for a route that needs an API key without a valid one (service/auth.py), 415 for a POST
  that is not JSON, 413 for a Content-Length over `max_body_bytes`;
* body reading bounded in size (413 for chunked bodies, counted while reading) and in
  time (408 when the whole body has not arrived within `body_timeout_s`; the connection
  is then closed);
* metrics: meg_requests_total / meg_request_duration_seconds by route template (early
  rejections too, when the path matches a route) and model, meg_requests_in_flight;
* one structured access-log line per request;
* last resort: an exception escaping the app becomes a logged 500 in the error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_type_hints

import orjson
from fastapi import HTTPException
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KEY_CHECKED, check_api_key
from service.engine.errors import EngineError
from service.errors import engine_error_response, error_body
from service.logs import access_log, clean_request_id, request_id_var
from service.metrics import Metrics

log = logging.getLogger("service.access")

_BODY_METHODS = {"POST", "PUT", "PATCH"}
_QUIET_PATHS = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes: access log at DEBUG


class _TooLarge(Exception):
    pass


class _Stalled(Exception):
    pass


def _flatten(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Routes with included routers opened up (FastAPI keeps an included router as one
    entry holding the original). Routers included under an extra prefix are left out: a
    request there is simply not checked early (the route's own dependency still runs)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            if not getattr(getattr(route, "include_context", None), "prefix", ""):
                yield from _flatten(inner.routes)
        else:
            yield route


def _needs_key(route: BaseRoute) -> bool:
    """A KeyedRoute, or a route guarded by a dependency that checks the API key
    (`require_api_key`, or a front-end's wrapper marked `guards_api_key`)."""
    return getattr(route, "needs_api_key", False) or any(
        getattr(getattr(d, "dependency", None), "guards_api_key", False)
        for d in getattr(route, "dependencies", []))


# 20 digits in a row may be an integer beyond 64 bits, which orjson reads as a float
# where the standard parser keeps an int (a strict integer field then words its 422
# differently). Small bodies with one go to the standard parser; large ones are scanned
# no more (the scan would cost more than the parse) and always went to orjson.
_LONG_NUMBER = re.compile(rb"\d{20,}")
_SCAN_BYTES = 64 * 1024


def parse_json(body: bytes) -> Any:
    """orjson (several times faster than the standard library; the parse runs on the event
    loop), else the standard parser: for what orjson refuses, and for small bodies holding
    a 20-digit number."""
    if len(body) >= _SCAN_BYTES or not _LONG_NUMBER.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # let the standard parser decide (and word the error)
    return json.loads(body)


class _FastJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class FastJSONRoute(APIRoute):
    """An APIRoute whose JSON bodies are parsed by orjson (`parse_json`). Anything orjson
    refuses (NaN literals, numbers beyond the float range, lone surrogates, bad JSON) or,
    in a body under 64 KB, might read differently (integers beyond 64 bits) goes to the
    standard parser, so what is accepted and how errors read stay the same."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(_FastJSONRequest(request.scope, request.receive))

        return route_handler


def answers_directly(endpoint: Any) -> Any:
    """Mark a route endpoint `async def f(body: Model, request: Request) -> Response` whose
    well-formed requests the request middleware answers itself (DirectRoute)."""
    endpoint.answers_directly = True
    return endpoint


class KeyedRoute(FastJSONRoute):
    """A FastJSONRoute that needs an API key (service/auth.py). The request middleware
    checks it from the headers before any body byte is read and says so in the scope;
    the route checks it itself only where that has not happened (no middleware). A route
    class rather than a `require_api_key` dependency: FastAPI resolves dependencies on
    every request, and this one would find nothing left to do."""

    needs_api_key = True

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            if not request.scope.get(KEY_CHECKED):
                h = request.headers
                check_api_key(h.get("authorization"), h.get("x-api-key"),
                              request.app.state.settings.api_key_list)
            return await handler(request)

        return route_handler


class DirectRoute(KeyedRoute):
    """A KeyedRoute whose endpoint may be marked `answers_directly`: then the request
    middleware, which has already checked the key, the size and the media type and read
    the body, parses and validates the body itself and calls the endpoint, without
    FastAPI's routing, dependency resolution and handler layers (on /energy they were
    ~60% of the server's time per single-row request: bench/profile_energy.py).

    Only a body that parses and validates takes that path; anything else goes to FastAPI
    unchanged, so every error reads as before. The engine's errors get the same answer
    as through the app's handler (service/errors.py)."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.body_model: type[BaseModel] | None = None
        if getattr(endpoint, "answers_directly", False):
            hint = get_type_hints(endpoint).get("body")
            if not (isinstance(hint, type) and issubclass(hint, BaseModel)):
                raise TypeError(f"{endpoint.__name__}: answers_directly needs `body: Model`")
            self.body_model = hint
        self.direct = self.body_model is not None  # whether the middleware calls `answer`

    async def answer(self, scope: Scope, body: bytes) -> Response | None:
        """The endpoint's response, or None when FastAPI should handle the request."""
        assert self.body_model is not None
        try:
            parsed = self.body_model.model_validate(parse_json(body))
        except (ValidationError, ValueError, RecursionError):
            return None  # FastAPI words the error, exactly as before
        scope["route"] = self
        try:
            response: Response = await self.endpoint(parsed, Request(scope))
        except EngineError as e:
            return engine_error_response(e)
        return response


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


# `curl -d '{...}'` sends application/x-www-form-urlencoded, and some clients send no
# content type: both are read as JSON (the body must still parse as JSON). Any other
# media type (text/plain, multipart/form-data, XML, ...) is refused with 415.
_READ_AS_JSON = {"", "application/x-www-form-urlencoded"}


@dataclass(frozen=True, slots=True)
class _Found:
    """What the middleware needs to know about a request's route, cached per path."""
    route: BaseRoute | None  # the route it reaches (a path-only match for a wrong method)
    full: bool  # a full match (path and method)
    needs_key: bool  # the route requires an API key


# Distinct (method, path) pairs remembered; beyond this the cache starts over, so that
# clients probing random paths cannot grow it without bound.
_ROUTE_CACHE_SIZE = 4096


@dataclass(slots=True)
class _Headers:
    """The request headers the middleware reads, in one pass over the raw list (ASGI
    header names are lower-case; the first of repeated headers wins, as in Starlette)."""
    request_id: str | None = None
    authorization: str | None = None
    api_key: str | None = None
    content_type: str = ""
    content_length: str | None = None

    @classmethod
    def of(cls, scope: Scope) -> _Headers:
        h = cls()
        seen: set[bytes] = set()
        for key, value in scope["headers"]:
            if key in _WANTED and key not in seen:
                seen.add(key)
                setattr(h, _WANTED[key], value.decode("latin-1"))
        return h


_WANTED = {b"x-request-id": "request_id", b"authorization": "authorization",
           b"x-api-key": "api_key", b"content-type": "content_type",
           b"content-length": "content_length"}


def _as_json_scope(scope: Scope) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
    return {**scope, "headers": headers + [(b"content-type", b"application/json")]}


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int,
                 router: Router | None = None, api_keys: list[str] | None = None,
                 body_timeout_s: float = 10.0):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.router = router  # to find the route (auth, metric labels) before the app runs
        self.api_keys = api_keys or []
        self.body_timeout_s = body_timeout_s
        self._flat: list[BaseRoute] | None = None  # the router's routes, built on first use
        self._found: dict[tuple[str, str, str], _Found] = {}
        # Metric children per (endpoint, model, status): .labels() takes a lock and
        # builds a key on every call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.access = access_log

    def _routes(self) -> list[BaseRoute]:
        if self._flat is None:
            self._flat = list(_flatten(self.router.routes)) if self.router is not None else []
        return self._flat

    def _route(self, scope: Scope) -> _Found:
        """The route this request will reach (a path-only match for a wrong method, for
        labels), whether it is a full match and whether it needs a key. Routes match on
        method and path alone, so the answer is cached per (method, root_path, path)."""
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        found = self._found.get(key)
        if found is None:
            found = self._match(scope)
            if len(self._found) >= _ROUTE_CACHE_SIZE:
                self._found.clear()
            self._found[key] = found
        return found

    def _match(self, scope: Scope) -> _Found:
        partial = None
        probe = {**scope}  # matching must not touch the real scope
        for route in self._routes():
            match, _ = route.matches(probe)
            if match == Match.FULL:
                return _Found(route, True, _needs_key(route))
            if match == Match.PARTIAL and partial is None:
                partial = route
        return _Found(partial, False, False)

    async def _send_error(self, scope: Scope, send: Send, status: int, code: str, message: str,
                          extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        # Open Inference Protocol clients expect its own error shape, {"error": "..."}.
        shape = {"error": message} if scope["path"].startswith("/v2/") else error_body(code, message)
        body = json.dumps(shape).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())] + (extra_headers or [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, receive: Receive) -> bytes:
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await self._read_chunks(receive)
        except TimeoutError:
            raise _Stalled() from None

    async def _read_chunks(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                raise _TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _Headers.of(scope)
        rid = clean_request_id(headers.request_id)
        token = request_id_var.set(rid)
        scope.setdefault("state", {})
        t0 = time.perf_counter()
        status = 500
        started = False
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        found = self._route(scope)
        self.metrics.in_flight.inc()
        try:
            if found.needs_key and found.full:
                if self.api_keys:
                    try:
                        check_api_key(headers.authorization, headers.api_key, self.api_keys)
                    except HTTPException as e:
                        await self._send_error(scope, send_wrapper, 401, "unauthorized", str(e.detail), [
                            (k.lower().encode(), v.encode()) for k, v in (e.headers or {}).items()])
                        return
                # Checked here, from the headers: the route's own dependency need not redo it.
                scope[KEY_CHECKED] = True
            if scope["method"] in _BODY_METHODS:
                content_type = headers.content_type
                # V2 inference bodies may carry binary tensors (service/v2/rest.py reads them).
                if not _is_json(content_type) and not scope["path"].startswith("/v2/"):
                    if content_type.split(";", 1)[0].strip().lower() not in _READ_AS_JSON:
                        await self._send_error(scope, send_wrapper, 415, "unsupported_media_type",
                                               "send the body as application/json")
                        return
                    scope = _as_json_scope(scope)
                length = headers.content_length
                if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                    if length.isdigit():
                        await self._send_error(scope, send_wrapper, 413, "payload_too_large",
                                               f"body over {self.max_body_bytes} bytes")
                    else:
                        await self._send_error(scope, send_wrapper, 400, "bad_request",
                                               "invalid Content-Length")
                    return
                try:
                    body = await self._read_body(receive)
                except _TooLarge:
                    await self._send_error(scope, send_wrapper, 413, "payload_too_large",
                                           f"body over {self.max_body_bytes} bytes")
                    return
                except _Stalled:
                    # The rest of the body may still come: the connection cannot be reused.
                    await self._send_error(scope, send_wrapper, 408, "body_timeout",
                                           f"request body not received within "
                                           f"{self.body_timeout_s:g} s", [(b"connection", b"close")])
                    return
                replayed = False

                async def replay() -> Message:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                route = found.route if found.full else None
                if isinstance(route, DirectRoute) and route.direct:
                    response = await route.answer(scope, body)
                    if response is not None:
                        await response(scope, replay, send_wrapper)
                        return
                await self.app(scope, replay, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error")
            if started:
                raise  # too late to answer; the server closes the connection
            await self._send_error(scope, send_wrapper, 500, "internal_error", "internal server error")
        finally:
            self._record(scope, status, time.perf_counter() - t0, found.route)
            self.metrics.in_flight.dec()
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float,
                matched: BaseRoute | None = None) -> None:
        route = scope.get("route") or matched
        # The route template, never the raw path: unknown paths must not explode label sets.
        endpoint = getattr(route, "path", None) or "unmatched"
        model = str(scope.get("state", {}).get("model") or "")
        key = (endpoint, model, status)
        children = self._children.get(key)
        if children is None:  # bounded: route templates x loaded models x statuses
            children = self._children[key] = (
                self.metrics.requests.labels(endpoint=endpoint, model=model, status=str(status)),
                self.metrics.request_duration.labels(endpoint=endpoint, model=model))
        children[0].inc()
        children[1].observe(seconds)
        path = scope.get("path", "")
        level = logging.DEBUG if path in _QUIET_PATHS and status < 500 else logging.INFO
        if log.isEnabledFor(level):
            self.access.write(level, f"{scope['method']} {path} {status}", method=scope["method"],
                              path=path, status=status, duration_ms=round(seconds * 1000.0, 3),
                              model=model)
