"""The hot routes answered by the request middleware itself (DirectRoute): the same
answer as FastAPI's own path, byte for byte, and every request that does not validate
still answered by FastAPI, so errors read as before."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.middleware import DirectRoute
from service.settings import Settings


@pytest.fixture(scope="module")
def pair(make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps over the same bundles; the second with the direct answers turned off
    (every DirectRoute behaves as a plain KeyedRoute)."""
    direct = create_app(make_settings())
    plain = create_app(make_settings())
    for route in plain.router.routes:
        if isinstance(route, DirectRoute):
            route.body_model = None
    with TestClient(direct) as a, TestClient(plain) as b:
        yield a, b


def _strip(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in {"x-request-id", "date"}}


CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("/energy", {"model": "digits", "inputs": [[0.5] * 64, [0.0] * 64]}, {}),
    ("/energy", {"model": "events", "records": [{"bytes": 120.5, "duration": 1.5, "protocol": "tcp"}]}, {}),
    ("/encode", {"model": "toy", "inputs": [[0.1, 0.2]]}, {}),
    ("/sample", {"model": "toy", "n": 5, "seed": 3}, {}),
    ("/sample", {"model": "toy", "n": 4, "seed": 1, "return_latent": True,
                 "mcmc": {"steps": 5, "step_size": 0.05}}, {}),
    ("/sample", {"model": "toy", "n": 3, "seed": 2}, {"accept": "application/octet-stream"}),
    # errors: schema (FastAPI words them), the engine's (the direct path maps them)
    ("/energy", {"model": "digits", "inputs": [[0.5] * 63]}, {}),
    ("/energy", {"model": "nope", "inputs": [[0.5] * 64]}, {}),
    ("/energy", {"inputs": "not rows"}, {}),
    ("/sample", {"model": "toy", "n": 0}, {}),
    ("/encode", {"model": "events", "records": [{"bytes": "x", "duration": 1.5, "protocol": "tcp"}]}, {}),
]


@pytest.mark.parametrize(("path", "body", "headers"), CASES)
def test_direct_answer_equals_fastapis(pair, path: str, body: dict[str, Any],
                                       headers: dict[str, str]) -> None:
    direct, plain = pair
    a = direct.post(path, json=body, headers=headers)
    b = plain.post(path, json=body, headers=headers)
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.content == b.content
    assert _strip(a.headers) == _strip(b.headers)


def test_direct_path_is_taken_only_for_valid_bodies(pair, monkeypatch) -> None:
    direct, _ = pair
    answered: list[bool] = []
    original = DirectRoute.answer

    async def spy(self: DirectRoute, scope: Any, body: bytes) -> Any:
        out = await original(self, scope, body)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(DirectRoute, "answer", spy)
    assert direct.post("/energy", json={"model": "digits", "inputs": [[0.0] * 64]}).status_code == 200
    assert direct.post("/energy", content=b"{not json").status_code == 400
    assert direct.post("/energy", json={"model": "digits", "inputs": 3}).status_code == 422
    assert answered == [True, False, False]


def test_direct_answers_are_counted_under_their_route(pair) -> None:
    direct, _ = pair

    def count(status: str) -> float:
        text = direct.get("/metrics").text
        for line in text.splitlines():
            if (line.startswith("meg_requests_total{") and 'endpoint="/energy"' in line
                    and 'model="digits"' in line and f'status="{status}"' in line):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    ok = count("200")
    direct.post("/energy", json={"model": "digits", "inputs": [[0.0] * 64]})
    assert count("200") == ok + 1
    assert direct.post("/energy", json={"model": "gone", "inputs": [[0.0] * 64]}).status_code == 404


def test_direct_route_needs_a_typed_body() -> None:
    from service.middleware import answers_directly

    @answers_directly
    async def endpoint(body: dict, request: Any) -> Any:  # type: ignore[type-arg]
        return None

    with pytest.raises(TypeError, match="body: Model"):
        DirectRoute("/x", endpoint, methods=["POST"])
