"""/anomaly: conformal p-values and calibrated flags (per-request target_fpr), records
with unseen categories, every bad row listed, numbers beyond range answered with 4xx."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from svc_helpers import LIMITS

from meg import bundle as B

EVENT = {"bytes": 100.0, "duration": 1.5, "protocol": "tcp"}


def _calibration(client: TestClient, name: str) -> B.Calibration:
    return client.app.state.engine.registry.models[name].manifest.calibration  # type: ignore[attr-defined]


def test_pvalues_follow_the_calibration_scores(client: TestClient) -> None:
    cal = _calibration(client, "toy").array
    x = np.random.default_rng(0).uniform(-2, 2, size=(64, 2))
    body = client.post("/anomaly", json={"model": "toy", "inputs": x.tolist(),
                                         "target_fpr": 0.1, "score": "energy"}).json()
    scores = np.array([r["score"] for r in body["results"]])
    p = np.array([r["p_value"] for r in body["results"]])
    at_least = (cal[None, :] >= scores[:, None] - 1e-5 * np.maximum(1, np.abs(scores))[:, None])
    np.testing.assert_allclose(p, (1 + at_least.sum(1)) / (len(cal) + 1))
    flags = np.array([r["is_anomaly"] for r in body["results"]])
    np.testing.assert_array_equal(flags, p <= 0.1)
    assert body["target_fpr"] == 0.1 and body["score"] == "energy"
    assert flags.any() and not flags.all()
    # a looser target flags a superset
    loose = client.post("/anomaly", json={"model": "toy", "inputs": x.tolist(),
                                          "target_fpr": 0.5, "score": "energy"}).json()
    loose_flags = np.array([r["is_anomaly"] for r in loose["results"]])
    assert (loose_flags >= flags).all() and loose_flags.sum() > flags.sum()


def test_target_fpr_holds_on_fresh_normal_data(client: TestClient) -> None:
    """Fresh draws from the toy's distribution are exchangeable with its calibration
    rows: the realized false-positive rate stays within binomial spread of the target."""
    from training.data.toys import sample_toy

    alpha, m = 0.05, 4_000
    n = _calibration(client, "toy").n
    x = sample_toy("25gaussians", m, seed=[123, 4])
    flagged = 0
    step = LIMITS["max_rows"]  # the test server's row limit
    for i in range(0, m, step):
        body = client.post("/anomaly", json={"model": "toy", "inputs": x[i:i + step].tolist(),
                                             "target_fpr": alpha}).json()
        flagged += sum(r["is_anomaly"] for r in body["results"])
    # spread of the test draws and of the calibration set, 4 standard deviations each
    tol = 4 * np.sqrt(alpha * (1 - alpha) / m) + 4 * np.sqrt(alpha * (1 - alpha) / n)
    assert flagged / m <= alpha + tol


def test_target_fpr_below_what_calibration_can_give(client: TestClient) -> None:
    n = _calibration(client, "toy").n
    r = client.post("/anomaly", json={"model": "toy", "inputs": [[0, 0]],
                                      "target_fpr": 0.5 / (n + 1)})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "target_fpr_out_of_range"
    d = client.get("/models/toy").json()["calibration"]
    assert d["min_target_fpr"] == pytest.approx(1 / (n + 1)) and d["n"] == n
    assert d["source"]


def test_unseen_categories_are_scored_and_named(client: TestClient) -> None:
    recs = [EVENT, {**EVENT, "protocol": "quic"}]
    body = client.post("/anomaly", json={"model": "events", "records": recs})
    assert body.status_code == 200, body.text
    res = body.json()["results"]
    assert "unseen" not in res[0] and res[1]["unseen"] == ["protocol"]
    assert 0 < res[1]["p_value"] <= 1
    assert client.get("/models/events").json()["unknown_category"] == "zeros"


def test_strict_policy_lists_every_bad_row(client: TestClient) -> None:
    recs = [EVENT, {**EVENT, "protocol": "quic"}, {**EVENT, "bytes": "many"},
            {**EVENT, "protocol": "sctp"}]
    r = client.post("/anomaly", json={"model": "events", "records": recs,
                                      "unknown_category": "error"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_record" and err["field"] == "records[1].protocol"
    assert [(d["index"], d["field"]) for d in err["details"]] == [
        (1, "records[1].protocol"), (2, "records[2].bytes"), (3, "records[3].protocol")]
    bad = client.post("/anomaly", json={"model": "events", "records": recs,
                                        "unknown_category": "sometimes"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "unknown_category"


@pytest.mark.parametrize("body", [
    {"model": "events", "records": [{**EVENT, "bytes": 10**400}]},
    {"model": "events", "records": [{**EVENT, "duration": -(10**400)}]},
    {"model": "events", "records": [{**EVENT, "bytes": 1e300}]},
    {"model": "toy", "inputs": [[10**400, 0]]},
    {"model": "toy", "inputs": [[0, 2**64 * 10**300]]},
    {"model": "toy", "inputs": [[1e300, 0]]},
])
def test_numbers_beyond_range_are_4xx(client: TestClient, body: dict) -> None:
    for path in ("/anomaly", "/energy"):
        r = client.post(path, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]


def test_big_integer_within_range_is_scored(client: TestClient) -> None:
    r = client.post("/anomaly", json={"model": "events", "records": [{**EVENT, "bytes": 2**64}]})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["is_anomaly"]


def test_every_wrong_row_is_listed(client: TestClient) -> None:
    r = client.post("/anomaly", json={"model": "toy", "inputs": [[0, 0], [1], [0, 0], [1, 2, 3]]})
    err = r.json()["error"]
    assert r.status_code == 422 and err["code"] == "wrong_dimension"
    assert [d["index"] for d in err["details"]] == [1, 3]
    r = client.post("/anomaly", json={"model": "toy", "inputs": [[0, "a"], [0, 0], [None, 0]]})
    err = r.json()["error"]
    assert r.status_code == 422 and [d["index"] for d in err["details"]] == [0, 2]
