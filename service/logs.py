"""Structured logs: one JSON object per line, each carrying the request id of the request
it was written for (a context variable set by the HTTP middleware)."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                            default=None)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_EXTRA_FIELDS = ("method", "path", "status", "duration_ms", "model", "bundle", "error")
_LOGGERS = ("service", "uvicorn", "uvicorn.error")


def clean_request_id(value: str | None) -> str:
    """The client's X-Request-ID when it is at most 128 safe characters, else a new one
    (never echo arbitrary bytes into headers and logs)."""
    if value and _REQUEST_ID_RE.match(value):
        return value
    return os.urandom(16).hex()  # 32 hex digits, as uuid4().hex, at a third of its cost


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, request_id, plus the known `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key in _EXTRA_FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        try:  # orjson: the access log writes a line per request
            return orjson.dumps(out, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
            return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    """Route the service's and uvicorn's loggers to one JSON handler on stderr. Idempotent:
    calling it again (a second app in tests) replaces the handler instead of adding one."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._meg = True  # type: ignore[attr-defined]
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if getattr(h, "_meg", False) or name.startswith("uvicorn"):
                logger.removeHandler(h)
        logger.setLevel(level)
        if name in ("service", "uvicorn"):
            logger.addHandler(handler)
        # uvicorn.error propagates to uvicorn; service.* children propagate to service.
        logger.propagate = name not in ("service", "uvicorn")
    # The middleware writes one JSON access line per request; uvicorn's own (plain text,
    # without request ids) would duplicate it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
