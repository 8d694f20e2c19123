"""The engine's errors: what went wrong, in domain terms. Each front-end maps them to
its protocol in one place (HTTP: service/errors.py)."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base: a stable machine `code`, a message for people, the request `field` at fault
    (dotted path, e.g. ``records[3].service``) and, for transient failures, how many
    seconds to wait before retrying."""

    def __init__(self, code: str, message: str, field: str | None = None,
                 retry_after_s: int | None = None, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        # every problem of a request that has several ({"index", "field", "reason"}); the
        # code/message/field above describe the first
        self.details = details


class InvalidInput(EngineError):
    """The request cannot be served as sent (bad rows, limits, options)."""


class ModelNotFound(EngineError):
    """The named model is not loaded (unknown, or it failed to load)."""


class Unavailable(EngineError):
    """Transient: no model yet, a full queue, or shutting down. Retry later."""

    def __init__(self, code: str, message: str, retry_after_s: int = 1):
        super().__init__(code, message, None, retry_after_s)


class DeadlineExceeded(EngineError):
    """The work did not finish before the request's deadline."""

    def __init__(self, what: str = "request"):
        super().__init__("timeout", f"{what} did not finish before its deadline")
