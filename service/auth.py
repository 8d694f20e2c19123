"""Optional API keys (MEG_API_KEYS, comma separated). With none configured the API is
open. A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; it is
compared in constant time against every configured key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Header, HTTPException, Request


def _matches(candidate: str, keys: list[str]) -> bool:
    ok = False
    for key in keys:  # no early exit: timing does not reveal which key (or prefix) matched
        ok |= hmac.compare_digest(candidate.encode(), key.encode())
    return ok


async def require_api_key(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """Dependency guarding every route except health checks and /metrics."""
    keys: list[str] = request.app.state.settings.api_key_list
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
