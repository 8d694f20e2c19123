"""The OpenAPI document and its docs pages: API-key schemes declared on exactly the
operations that enforce a key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from svc_helpers import serve_app

from service.settings import Settings

OPEN = {"/healthz", "/readyz", "/metrics", "/models/{name}/ready", "/v2/health/live",
        "/v2/health/ready"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in spec["paths"].items()
            for method, op in ops.items()]


def test_openapi_declares_api_key_schemes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer",
                                 "description": schemes["bearer"]["description"]}
    assert (schemes["apiKey"]["type"], schemes["apiKey"]["in"],
            schemes["apiKey"]["name"]) == ("apiKey", "header", "X-API-Key")
    ops = _operations(spec)
    assert {p for p, _, _ in ops} >= OPEN | {"/energy", "/sample", "/models"}
    for path, method, op in ops:
        if path in OPEN:
            assert "security" not in op, (method, path)
        else:
            # Either scheme will do; the shared app has no keys, so none is also fine.
            assert op["security"] == [{"bearer": []}, {"apiKey": []}, {}], (method, path)


@pytest.mark.anyio
async def test_declared_security_matches_what_is_enforced(toy_only: Path) -> None:
    """Every operation asked without a key: 401 exactly where the document says a key is
    required (whichever layer enforces it), and never 401 with a valid key."""
    settings = Settings(models_dir=toy_only, log_level="WARNING", inference_workers=1,
                        api_keys="k1,k2")
    async with serve_app(settings) as (_, c):
        spec = (await c.get("/openapi.json")).json()
        protected = 0
        for path, method, op in _operations(spec):
            url = path.replace("{name}", "toy").replace("{version}", "1")
            kw: dict[str, Any] = {"json": {}} if method == "post" else {}
            required = bool(op.get("security")) and {} not in op["security"]
            assert op.get("security", [])[:2] in ([], [{"bearer": []}, {"apiKey": []}])
            r = await c.request(method, url, **kw)
            assert (r.status_code == 401) == required, (method, path, r.status_code, r.text)
            for headers in ({"Authorization": "Bearer k2"}, {"X-API-Key": "k1"}):
                r = await c.request(method, url, headers=headers, **kw)
                assert r.status_code != 401, (method, path, headers)
            protected += required
        assert protected >= 7
