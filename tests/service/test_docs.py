"""The OpenAPI document and its docs pages: /docs and /redoc load nothing from outside
the server (they work offline), and API-key schemes are declared on exactly the
operations that enforce a key."""

from __future__ import annotations

import re
from html.parser import HTMLParser
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


class _Refs(HTMLParser):
    """Every src= and href= of a page, and the inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def _page_refs(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    refs = list(parser.refs)
    for script in parser.scripts:  # Swagger UI's initialiser names the OpenAPI document
        refs += re.findall(r"\burl:\s*'([^']+)'", script)
    for m in re.finditer(r'spec-url="([^"]+)"', html):  # ReDoc's element
        refs.append(m.group(1))
    return refs


def _assert_served_locally(c: TestClient, page: str) -> list[str]:
    r = c.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://|//[a-z]", r.text, re.I), "a URL off this server"
    refs = _page_refs(r.text)
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        got = c.get(ref)
        assert got.status_code == 200 and len(got.content) > 100, (ref, got.status_code)
    return refs


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(client: TestClient, page: str) -> None:
    refs = _assert_served_locally(client, page)
    assert "/openapi.json" in refs
    scripts = [ref for ref in refs if ref.endswith(".js")]
    assert scripts, refs
    js = client.get(scripts[0])
    assert "javascript" in js.headers["content-type"] and len(js.content) > 500_000
    if page == "/docs":  # Swagger UI 5 (4 cannot render OpenAPI 3.1, which FastAPI writes)
        assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
        assert b"SwaggerUIBundle" in js.content and any(r.endswith(".css") for r in refs)
        html = client.get(page).text
        assert '"validatorUrl": null' in html and '"persistAuthorization": true' in html


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
        for page in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            assert (await c.get(page)).status_code == 200, page  # open, like the probes
