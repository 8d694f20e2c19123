"""The HTTP middleware (plain ASGI, so it sees every request, errors included):

* request id: accepts a safe `X-Request-ID` or makes one, returns it, tags every log line;
* body limits: 415 for a POST that is not JSON, 413 for a body over `max_body_bytes`
  (from Content-Length up front, and counted while reading for chunked bodies);
* metrics: meg_requests_total / meg_request_duration_seconds by route template and model,
  meg_requests_in_flight;
* one structured access-log line per request;
* last resort: an exception escaping the app becomes a logged 500 in the error shape.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body
from service.logs import clean_request_id, request_id_var
from service.metrics import Metrics

log = logging.getLogger("service.access")

_BODY_METHODS = {"POST", "PUT", "PATCH"}
_QUIET_PATHS = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes: access log at DEBUG


class _TooLarge(Exception):
    pass


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


# `curl -d '{...}'` sends application/x-www-form-urlencoded, and some clients send no
# content type: both are read as JSON (the body must still parse as JSON). Any other
# media type (text/plain, multipart/form-data, XML, ...) is refused with 415.
_READ_AS_JSON = {"", "application/x-www-form-urlencoded"}


def _as_json_scope(scope: Scope) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
    return {**scope, "headers": headers + [(b"content-type", b"application/json")]}


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def _send_error(self, send: Send, status: int, code: str, message: str,
                          extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = json.dumps(error_body(code, message)).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())] + (extra_headers or [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, receive: Receive) -> bytes:
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
        headers = Headers(scope=scope)
        rid = clean_request_id(headers.get("x-request-id"))
        token = request_id_var.set(rid)
        scope.setdefault("state", {})
        t0 = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False}
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [rid_header]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if scope["method"] in _BODY_METHODS:
                content_type = headers.get("content-type", "")
                # V2 inference bodies may carry binary tensors (service/v2/rest.py reads them).
                if not _is_json(content_type) and not scope["path"].startswith("/v2/"):
                    if content_type.split(";", 1)[0].strip().lower() not in _READ_AS_JSON:
                        await self._send_error(send_wrapper, 415, "unsupported_media_type",
                                               "send the body as application/json")
                        return
                    scope = _as_json_scope(scope)
                length = headers.get("content-length")
                if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                    if length.isdigit():
                        await self._send_error(send_wrapper, 413, "payload_too_large",
                                               f"body over {self.max_body_bytes} bytes")
                    else:
                        await self._send_error(send_wrapper, 400, "bad_request",
                                               "invalid Content-Length")
                    return
                try:
                    body = await self._read_body(receive)
                except _TooLarge:
                    await self._send_error(send_wrapper, 413, "payload_too_large",
                                           f"body over {self.max_body_bytes} bytes")
                    return
                replayed = False

                async def replay() -> Message:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error")
            if state["started"]:
                raise  # too late to answer; the server closes the connection
            await self._send_error(send_wrapper, 500, "internal_error", "internal server error")
        finally:
            self._record(scope, state["status"], time.perf_counter() - t0)
            self.metrics.in_flight.dec()
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        # The route template, never the raw path: unknown paths must not explode label sets.
        endpoint = getattr(route, "path", None) or "unmatched"
        model = str(scope.get("state", {}).get("model") or "")
        self.metrics.requests.labels(endpoint=endpoint, model=model, status=str(status)).inc()
        self.metrics.request_duration.labels(endpoint=endpoint, model=model).observe(seconds)
        path = scope.get("path", "")
        level = logging.DEBUG if path in _QUIET_PATHS and status < 500 else logging.INFO
        log.log(level, "%s %s %d", scope["method"], path, status, extra={
            "method": scope["method"], "path": path, "status": status,
            "duration_ms": round(seconds * 1000.0, 3), "model": model})
