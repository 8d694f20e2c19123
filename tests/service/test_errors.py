"""Every bad input gets a 4xx in the error shape, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from svc_helpers import LIMITS, metric_value

JSON = {"content-type": "application/json"}
TOY = {"model": "toy"}
EV = {"bytes": 1.0, "duration": 1.0, "protocol": "tcp"}

# (id, method, path, json body or raw bytes, extra headers, status, field)
CASES: list[tuple[str, str, str, Any, dict[str, str], int, str | None]] = [
    ("wrong-dim", "POST", "/energy", {**TOY, "inputs": [[1, 2, 3]]}, {}, 422, "inputs[0]"),
    ("ragged", "POST", "/energy", {**TOY, "inputs": [[1, 2], [1]]}, {}, 422, "inputs[1]"),
    ("nan-literal", "POST", "/energy", b'{"model": "toy", "inputs": [[NaN, 1]]}', JSON, 422,
     "inputs[0][0]"),
    ("inf-literal", "POST", "/energy", b'{"model": "toy", "inputs": [[1, -Infinity]]}', JSON, 422,
     "inputs[0][1]"),
    ("nan-string", "POST", "/energy", {**TOY, "inputs": [["NaN", 1]]}, {}, 422, "inputs[0][0]"),
    ("inf-string", "POST", "/energy", {**TOY, "inputs": [[1, "inf"]]}, {}, 422, "inputs[0][1]"),
    ("numeric-string", "POST", "/energy", {**TOY, "inputs": [["1.5", 1]]}, {}, 422, "inputs[0][0]"),
    ("not-a-number", "POST", "/energy", {**TOY, "inputs": [["abc", 1]]}, {}, 422, "inputs[0][0]"),
    ("null", "POST", "/energy", {**TOY, "inputs": [[None, 1]]}, {}, 422, "inputs[0][0]"),
    ("bool", "POST", "/energy", {**TOY, "inputs": [[True, 1]]}, {}, 422, "inputs[0][0]"),
    ("nested", "POST", "/energy", {**TOY, "inputs": [[[1], 1]]}, {}, 422, "inputs[0][0]"),
    ("float32-overflow", "POST", "/energy", {**TOY, "inputs": [[1e39, 1]]}, {}, 422, "inputs[0][0]"),
    ("empty-inputs", "POST", "/energy", {**TOY, "inputs": []}, {}, 422, "inputs"),
    ("empty-row", "POST", "/energy", {**TOY, "inputs": [[]]}, {}, 422, "inputs[0]"),
    ("inputs-not-list", "POST", "/energy", {**TOY, "inputs": "1,2"}, {}, 422, "inputs"),
    ("neither", "POST", "/energy", TOY, {}, 422, None),
    ("both", "POST", "/energy", {"model": "events", "inputs": [[0] * 5], "records": [EV]}, {},
     422, None),
    ("too-many-rows", "POST", "/energy", {**TOY, "inputs": [[0, 0]] * (LIMITS["max_rows"] + 1)},
     {}, 422, "inputs"),
    ("extra-field", "POST", "/energy", {**TOY, "inputs": [[0, 0]], "oops": 1}, {}, 422, "oops"),
    ("body-is-array", "POST", "/energy", [[0, 0]], {}, 422, None),
    ("empty-body", "POST", "/energy", b"", JSON, 422, None),
    ("malformed-json", "POST", "/energy", b'{"inputs": [[1, 2]', JSON, 400, None),
    ("not-utf8", "POST", "/energy", b'\xff\xfe{"a"', JSON, 400, None),
    ("text-plain", "POST", "/energy", b'{"inputs": [[1, 2]]}', {"content-type": "text/plain"}, 415,
     None),
    # curl's default form type is read as JSON, so a form body is malformed JSON.
    ("form", "POST", "/energy", b"inputs=1", {"content-type": "application/x-www-form-urlencoded"},
     400, None),
    ("xml", "POST", "/sample", b"<n>1</n>", {"content-type": "application/xml"}, 415, None),
    ("multipart", "POST", "/sample", b"--x--", {"content-type": "multipart/form-data; boundary=x"},
     415, None),
    ("unknown-model", "POST", "/energy", {"model": "nope", "inputs": [[0, 0]]}, {}, 404, "model"),
    ("traversal-model", "POST", "/energy", {"model": "../toy", "inputs": [[0, 0]]}, {}, 422, "model"),
    ("slash-model", "POST", "/sample", {"model": "a/b", "n": 1}, {}, 422, "model"),
    ("model-not-string", "POST", "/sample", {"model": 3, "n": 1}, {}, 422, "model"),
    ("traversal-path", "GET", "/models/..%2F..%2Fetc", None, {}, 404, None),
    ("dotdot-path", "GET", "/models/..", None, {}, 404, None),
    ("unknown-feature", "POST", "/energy", {"model": "events", "records": [{**EV, "x": 1}]}, {}, 422,
     "records[0].x"),
    ("missing-feature", "POST", "/energy", {"model": "events", "records": [{"bytes": 1.0,
     "protocol": "tcp"}]}, {}, 422, "records[0].duration"),
    ("unknown-category-strict", "POST", "/anomaly", {"model": "events", "records": [{**EV,
     "protocol": "sctp"}], "unknown_category": "error"}, {}, 422, "records[0].protocol"),
    ("record-int-beyond-float", "POST", "/anomaly", {"model": "events", "records": [{**EV,
     "bytes": 10**400}]}, {}, 422, "records[0].bytes"),
    ("input-int-beyond-float", "POST", "/energy", {**TOY, "inputs": [[10**400, 0]]}, {}, 422,
     None),
    ("record-string-number", "POST", "/encode", {"model": "events", "records": [{**EV,
     "bytes": "12"}]}, {}, 422, "records[0].bytes"),
    ("record-not-object", "POST", "/energy", {"model": "events", "records": [1]}, {}, 422,
     "records[0]"),
    ("records-without-preprocessing", "POST", "/energy", {**TOY, "records": [{"x": 1, "y": 2}]},
     {}, 422, "records"),
    ("n-zero", "POST", "/sample", {"n": 0}, {}, 422, "n"),
    ("n-negative", "POST", "/sample", {"n": -3}, {}, 422, "n"),
    ("n-over-limit", "POST", "/sample", {"n": LIMITS["max_samples"] + 1}, {}, 422, "n"),
    ("n-float", "POST", "/sample", {"n": 1.5}, {}, 422, "n"),
    ("n-string", "POST", "/sample", {"n": "4"}, {}, 422, "n"),
    ("n-missing", "POST", "/sample", {}, {}, 422, "n"),
    ("seed-negative", "POST", "/sample", {"n": 1, "seed": -1}, {}, 422, "seed"),
    ("steps-over-limit", "POST", "/sample", {"n": 1, "mcmc": {"steps": LIMITS["max_mcmc_steps"] + 1}},
     {}, 422, "mcmc.steps"),
    ("steps-zero", "POST", "/sample", {"n": 1, "mcmc": {"steps": 0}}, {}, 422, "mcmc.steps"),
    ("step-size-zero", "POST", "/sample", {"n": 1, "mcmc": {"step_size": 0}}, {}, 422,
     "mcmc.step_size"),
    ("temperature-negative", "POST", "/sample", {"n": 1, "mcmc": {"temperature": -1}}, {}, 422,
     "mcmc.temperature"),
    ("records-flag-no-preprocessing", "POST", "/sample", {**TOY, "n": 1, "return_records": True},
     {}, 422, "return_records"),
    ("threshold-and-target-fpr", "POST", "/anomaly", {**TOY, "inputs": [[0, 0]],
     "threshold": 1.0, "target_fpr": 0.1}, {}, 422, None),
    ("target-fpr-out-of-range", "POST", "/anomaly", {**TOY, "inputs": [[0, 0]],
     "target_fpr": 1.5}, {}, 422, "target_fpr"),
    ("contamination-is-gone", "POST", "/anomaly", {**TOY, "inputs": [[0, 0]],
     "contamination": 0.1}, {}, 422, "contamination"),
    ("threshold-nan", "POST", "/anomaly", b'{"model": "toy", "inputs": [[0, 0]], "threshold": NaN}',
     JSON, 422, "threshold"),
    ("top-k-zero", "POST", "/anomaly", {**TOY, "inputs": [[0, 0]], "explain": True, "top_k": 0},
     {}, 422, "top_k"),
    ("png-n-zero", "GET", "/sample.png?model=toy&n=0", None, {}, 422, "n"),
    ("png-n-string", "GET", "/sample.png?model=toy&n=abc", None, {}, 422, "n"),
    ("png-steps-over-limit", "GET", f"/sample.png?model=toy&mcmc_steps={LIMITS['max_mcmc_steps'] + 1}",
     None, {}, 422, "mcmc.steps"),
    ("png-unknown-model", "GET", "/sample.png?model=nope", None, {}, 404, "model"),
    ("wrong-method", "GET", "/energy", None, {}, 405, None),
    ("unknown-path", "GET", "/nope", None, {}, 404, None),
    ("content-length-over-limit", "POST", "/energy", b"{}",
     {**JSON, "content-length": str(LIMITS["max_body_bytes"] + 1)}, 413, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(client: TestClient, case: tuple) -> None:
    _, method, path, body, headers, status, field = case
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    # a 422 lists every problem in details (at least one); other statuses do not
    assert set(err) == {"code", "message", "field"} | ({"details"} if status == 422 else set())
    assert err["code"] and err["message"]
    if status == 422:
        assert err["details"] and all(set(d) == {"index", "field", "reason"}
                                      for d in err["details"])
    if field is not None:
        assert err["field"] == field, err


def test_streamed_body_over_limit(client: TestClient) -> None:
    """No Content-Length (chunked): the limit is enforced while reading."""
    chunk = b" " * 65536

    def body():
        yield b'{"model": "toy", "inputs": [[0, 0]]'
        for _ in range(LIMITS["max_body_bytes"] // len(chunk) + 2):
            yield chunk
        yield b"}"

    r = client.post("/energy", content=body(), headers=JSON)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_large_valid_body_under_limit(client: TestClient) -> None:
    rows = [[0.5] * 64] * LIMITS["max_rows"]
    assert len(json.dumps({"inputs": rows})) < LIMITS["max_body_bytes"]
    r = client.post("/energy", json={"model": "digits", "inputs": rows})
    assert r.status_code == 200 and len(r.json()["energies"]) == LIMITS["max_rows"]


def test_bad_inputs_never_reach_500(client: TestClient) -> None:
    """Runs after the cases above in the same session app: no request ended in 5xx."""
    text = client.get("/metrics").text
    for status in ("500", "502", "503", "504"):
        assert metric_value(text, "meg_requests_total", status=status) == 0


def test_last_resort_handler(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    service = client.app.state.engine  # type: ignore[attr-defined]

    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(service, "energy", boom)
    r = client.post("/energy", json={"model": "toy", "inputs": [[0, 0]]})
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal server error",
                                  "field": None}}
    assert "kaboom" not in r.text and r.headers["x-request-id"]


@pytest.mark.parametrize("headers", [{"content-type": "application/x-www-form-urlencoded"}, {}])
def test_curl_default_content_type_is_read_as_json(client: TestClient, headers: dict) -> None:
    """`curl -X POST localhost:8000/sample -d '{"n": 4}'` (form type, or none) works."""
    r = client.post("/sample", content=b'{"n": 4, "model": "toy"}', headers=headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["samples"]) == 4
