"""The hot routes answered by the request middleware itself (DirectRoute): the same
answer as FastAPI's own path, byte for byte, and every request that does not validate
still answered by FastAPI, so errors read as before."""

from __future__ import annotations

import json
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
            route.direct = False
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


def _v2_binary(x: list[list[float]]) -> tuple[bytes, dict[str, str]]:
    import numpy as np

    raw = np.asarray(x, dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(x), len(x[0])],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "content-type": "application/octet-stream"}


def _v2_json(name: str, shape: list[int], data: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": shape,
                                   "data": data}]}).encode()


V2_CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("/v2/models/toy/infer", _v2_json("x", [2, 2], [0.1, 0.2, 0.3, 0.4]), {}),
    ("/v2/models/toy/versions/1/infer", _v2_json("x", [1, 2], [0.1, 0.2]), {}),
    ("/v2/models/toy.sample/infer", json.dumps({"inputs": [
        {"name": "n", "datatype": "INT64", "shape": [1], "data": [3]},
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [5]}]}).encode(), {}),
    ("/v2/models/toy/infer", *_v2_binary([[0.5, 0.25], [1.0, -1.0]])),
    # errors in the V2 shape: bad tensor, unknown model, bad JSON
    ("/v2/models/toy/infer", _v2_json("x", [1, 3], [0.1, 0.2]), {}),
    ("/v2/models/nope/infer", _v2_json("x", [1, 2], [0.1, 0.2]), {}),
    ("/v2/models/toy/infer", b"{not json", {}),
]


@pytest.mark.parametrize(("path", "body", "headers"), V2_CASES)
def test_direct_v2_answer_equals_fastapis(pair, path: str, body: bytes,
                                          headers: dict[str, str]) -> None:
    direct, plain = pair
    headers = {"content-type": "application/json", **headers}
    a = direct.post(path, content=body, headers=headers)
    b = plain.post(path, content=body, headers=headers)
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.content == b.content
    assert _strip(a.headers) == _strip(b.headers)


@pytest.mark.parametrize(("path", "body", "headers"), CASES)
def test_direct_answer_equals_fastapis(pair, path: str, body: dict[str, Any],
                                       headers: dict[str, str]) -> None:
    direct, plain = pair
    a = direct.post(path, json=body, headers=headers)
    b = plain.post(path, json=body, headers=headers)
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.content == b.content
    assert _strip(a.headers) == _strip(b.headers)


def _spy_answers(monkeypatch: pytest.MonkeyPatch, cls: type[DirectRoute]) -> list[bool]:
    """Whether each call of `cls.answer` answered (True) or left the request to FastAPI."""
    answered: list[bool] = []
    original = cls.answer

    async def spy(self: DirectRoute, scope: Any, body: bytes) -> Any:
        out = await original(self, scope, body)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(cls, "answer", spy)
    return answered


def test_direct_path_is_taken_only_for_valid_bodies(pair, monkeypatch) -> None:
    direct, _ = pair
    answered = _spy_answers(monkeypatch, DirectRoute)
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


def test_v2_infer_is_answered_directly(pair, monkeypatch) -> None:
    from service.v2.rest import InferRoute

    direct, _ = pair
    answered = _spy_answers(monkeypatch, InferRoute)
    r = direct.post("/v2/models/toy/infer", content=_v2_json("x", [1, 2], [0.1, 0.2]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and answered == [True]
