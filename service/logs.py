"""Structured logs: one JSON object per line, each carrying the request id of the request
it was written for (a context variable set by the HTTP middleware)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

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
        return _json_line(out)


def _json_line(out: dict[str, object]) -> str:
    try:  # orjson: the access log writes a line per request
        return orjson.dumps(out, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
        return json.dumps(out, default=str)


class AccessLog:
    """The access log: one JSON line per request, the same fields as JsonFormatter's.

    With the default configuration (setup_logging's one handler, nothing added) the
    lines skip the logging machinery (record, handler lock, formatter, a flush per line:
    ~20 us a line against ~6 us) and are written in one piece at most `flush_s` later,
    from the event loop. Any other configuration (a handler or filter added anywhere on
    the way) gets ordinary records, so it sees every line."""

    def __init__(self, name: str = "service.access", flush_s: float = 0.05):
        self.logger = logging.getLogger(name)
        self.flush_s = flush_s
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: logging.StreamHandler[Any] | None = None

    def _default_handler(self) -> logging.StreamHandler[Any] | None:
        """setup_logging's handler when it is the only place a line goes, else None."""
        lg = self.logger
        parent = lg.parent
        if (lg.handlers or lg.filters or not lg.propagate or parent is None
                or parent.name != "service" or parent.propagate or parent.filters
                or len(parent.handlers) != 1):
            return None
        h = parent.handlers[0]
        if not (getattr(h, "_meg", False) and isinstance(h, logging.StreamHandler)) or h.filters:
            return None
        return h

    def write(self, level: int, message: str, **fields: Any) -> None:
        """Log `message` at `level` (the caller checked isEnabledFor) with `fields`."""
        handler = self._default_handler()
        if handler is None or level < handler.level:
            self.logger.log(level, message, extra=fields)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.logger.log(level, message, extra=fields)
            return
        out: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": logging.getLevelName(level), "logger": self.logger.name,
            "message": message, "request_id": request_id_var.get(), **fields}
        self._lines.append(_json_line(out))
        self._handler = handler
        if self._timer is not None and self._loop is not loop:
            self.flush()  # lines left by a loop that is gone (a test's app, say)
        if self._timer is None:
            self._loop = loop
            self._timer = loop.call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        """Write the pending lines (the timer does; shutdown calls it too)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        h = self._handler
        if not lines or h is None:
            return
        text = "\n".join(lines) + "\n"
        h.acquire()
        try:
            h.stream.write(text)
            h.flush()
        except Exception:  # a closed stream must not take a request down with it
            pass
        finally:
            h.release()


access_log = AccessLog()  # one per process: the HTTP and gRPC front-ends share its buffer


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
