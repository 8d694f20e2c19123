"""One error shape for every failure: ``{"error": {"code", "message", "field"}}``. A 422
adds ``details``: every problem of the request (every bad row and value, every schema
violation) as ``{"index", "field", "reason"}`` (index: the row, or null), at least one;
code, message and field describe the first.

The engine's domain errors get their HTTP status here (ENGINE_STATUS), FastAPI's own
validation and HTTP errors are re-shaped here; anything unexpected goes
through a last-resort handler that logs the traceback and answers 500 in the same shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.engine.errors import (
    DeadlineExceeded,
    EngineError,
    InvalidInput,
    ModelNotFound,
    Unavailable,
)

log = logging.getLogger("service.errors")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "validation_error", 429: "too_many_requests", 500: "internal_error",
    503: "unavailable", 504: "timeout",
}


def error_body(code: str, message: str, field: str | None = None,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "field": field}
    if details:
        err["details"] = details
    return {"error": err}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None,
                   details: list[dict[str, Any]] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, field, details), status_code=status,
                        headers=headers)


def _row_index(loc: Any) -> int | None:
    """The row a validation error's location points at: ('body', 'records', 3, ...) -> 3."""
    parts = list(loc)
    for a, b in zip(parts, parts[1:], strict=False):
        if a in ("inputs", "records") and isinstance(b, int):
            return b
    return None


def _loc_to_field(loc: Any) -> str | None:
    """('body', 'inputs', 3, 1) -> 'inputs[3][1]'; drops pydantic's union-branch tags."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and ("[" in p or p.startswith("function-")):
            continue  # e.g. 'list[float]' or 'function-after[...]' union tags
        else:
            out += f".{p}" if out else str(p)
    return out or None


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first: dict[str, Any] = (dict(errors[0]) if errors else
                             {"type": "value_error", "msg": "invalid request", "loc": ()})
    # Malformed JSON is 400 (the body is not a JSON document at all); a well-formed body
    # that does not fit the schema is 422.
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error", "invalid JSON")
        return error_response(400, "invalid_json", f"request body is not valid JSON: {detail}")
    field = _loc_to_field(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value"))
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    details = [{"index": _row_index(e.get("loc", ())), "field": _loc_to_field(e.get("loc", ())),
                "reason": str(e.get("msg", "invalid value"))} for e in errors]
    return error_response(422, "validation_error", f"{field}: {msg}" if field else msg, field,
                          details=details)


async def _http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))


# The engine's domain errors as HTTP statuses: the one place this mapping lives.
ENGINE_STATUS: dict[type[EngineError], int] = {
    InvalidInput: 422, ModelNotFound: 404, Unavailable: 503, DeadlineExceeded: 504}


def engine_status(exc: EngineError) -> int:
    return next((s for cls, s in ENGINE_STATUS.items() if isinstance(exc, cls)), 500)


def engine_error_response(exc: EngineError) -> JSONResponse:
    """The answer to an engine error (also used by the middleware's direct routes)."""
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    status = engine_status(exc)
    details = exc.details
    if status == 422 and not details:
        details = [{"index": None, "field": exc.field, "reason": exc.message}]
    return error_response(status, exc.code, exc.message, exc.field, headers, details)


async def _engine_handler(request: Request, exc: EngineError) -> JSONResponse:
    return engine_error_response(exc)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error: %s", type(exc).__name__)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the error-shape handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_handler)  # type: ignore[arg-type]
    app.add_exception_handler(EngineError, _engine_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unhandled_handler)
