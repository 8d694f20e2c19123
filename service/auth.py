"""Optional API keys (MEG_API_KEYS, comma separated). With none configured the API is
open. A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; it is
compared in constant time against every configured key, before the request body is
read (service/middleware.py)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import HTTPException, Request

D = TypeVar("D", bound=Callable[..., Any])


def _matches(candidate: str, keys: list[str]) -> bool:
    ok = False
    for key in keys:  # no early exit: timing does not reveal which key (or prefix) matched
        ok |= hmac.compare_digest(candidate.encode(), key.encode())
    return ok


def check_api_key(authorization: str | None, x_api_key: str | None, keys: list[str]) -> None:
    """Raise 401 (HTTPException) unless one of `keys` is presented; no-op without keys.
    Needs only the headers, so the middleware runs it before reading any body."""
    if not keys:
        return
    candidate = x_api_key
    if candidate is None and authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            candidate = token.strip()
    if candidate is None:
        raise HTTPException(401, "missing API key (Authorization: Bearer <key> or "
                            "X-API-Key: <key>)", {"WWW-Authenticate": "Bearer"})
    if not _matches(candidate, keys):
        raise HTTPException(401, "invalid API key",
                            {"WWW-Authenticate": 'Bearer error="invalid_token"'})


# Set in the ASGI scope by the request middleware once it has checked the request's key
# (service/middleware.py, with the same keys as the settings): the route dependency below
# then has nothing left to do.
KEY_CHECKED = "meg.api_key_checked"


def guards_api_key(dependency: D) -> D:
    """Mark a route dependency that checks the API key: the request middleware then
    checks the key itself, from the headers, before reading any body
    (service/middleware.py), and the dependency sees it done."""
    dependency.guards_api_key = True  # type: ignore[attr-defined]
    return dependency


@guards_api_key
async def require_api_key(request: Request) -> None:
    """Dependency guarding every route except health checks and /metrics. The request
    middleware runs the same check first, from the headers alone, so an unauthenticated
    body is never read; this dependency marks the routes that need a key (the middleware
    looks for it) and guards them wherever the middleware is not installed. It takes the
    request alone (no header parameters for FastAPI to resolve on every request): the
    OpenAPI document declares the key schemes itself (service/main.py)."""
    if request.scope.get(KEY_CHECKED):
        return
    keys = request.app.state.settings.api_key_list
    if keys:
        h = request.headers
        check_api_key(h.get("authorization"), h.get("x-api-key"), keys)
