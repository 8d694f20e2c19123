"""Every endpoint on the happy path, through the shared TestClient app."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from svc_helpers import metric_value

EVENT = {"bytes": 100.0, "duration": 1.5, "protocol": "tcp"}
ODD_EVENT = {"bytes": 950.0, "duration": 0.1, "protocol": "udp"}


def test_health_ready_and_request_id(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "models": ["digits", "events", "toy"]}
    assert r.headers["x-request-id"] == "abc-123"
    # Unsafe or overlong ids are replaced, not echoed.
    for bad in ("a b\tc", "x" * 129):
        rid = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert rid != bad and len(rid) == 32


def test_models_list_and_detail(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["default"] == "digits"
    assert body["failed"] == {}
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"digits", "events", "toy"}
    assert by_name["toy"]["kind"] == "points" and by_name["toy"]["data_dim"] == 2
    assert "CPUExecutionProvider" in by_name["digits"]["providers"]

    d = client.get("/models/events").json()
    assert d["feature_names"] == ["bytes", "duration", "protocol=icmp", "protocol=tcp", "protocol=udp"]
    assert [f["name"] for f in d["input_features"]] == ["bytes", "duration", "protocol"]
    cal = d["calibration"]
    assert cal["n"] > 0 and 0 < cal["target_fpr"] < 1 and cal["score"] == "energy"
    assert cal["percentiles"]["50"] <= cal["percentiles"]["99"]
    assert d["recipe"] == "tabular" and d["version"] == by_name["events"]["version"]
    assert client.get("/models/nope").status_code == 404


@pytest.mark.parametrize("model,dim", [("toy", 2), ("digits", 64), ("events", 5)])
def test_sample_shapes(client: TestClient, model: str, dim: int) -> None:
    r = client.post("/sample", json={"model": model, "n": 5, "seed": 3, "return_latent": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["seed"] == 3
    assert np.asarray(body["samples"]).shape == (5, dim)
    assert len(body["latent"]) == 5
    assert "acceptance_rate" not in body


def test_sample_default_model_and_random_seed(client: TestClient) -> None:
    a = client.post("/sample", json={"n": 2}).json()
    b = client.post("/sample", json={"n": 2}).json()
    assert a["model"] == "digits"
    assert a["seed"] != b["seed"] and a["samples"] != b["samples"]
    # The reported seed reproduces the draw.
    again = client.post("/sample", json={"n": 2, "seed": a["seed"]}).json()
    assert again["samples"] == a["samples"]


@pytest.mark.parametrize("mcmc", [None, {"steps": 5, "step_size": 0.05, "adapt": True}])
def test_same_seed_same_samples(client: TestClient, mcmc: dict | None) -> None:
    req = {"model": "toy", "n": 16, "seed": 42, "mcmc": mcmc}
    a, b = (client.post("/sample", json=req).json() for _ in range(2))
    assert a["samples"] == b["samples"]
    other = client.post("/sample", json={**req, "seed": 43}).json()
    assert other["samples"] != a["samples"]
    if mcmc:
        assert 0.0 <= a["acceptance_rate"] <= 1.0 and a["step_size"] > 0
        assert a["acceptance_rate"] == b["acceptance_rate"]


def test_sample_mcmc_changes_latent(client: TestClient) -> None:
    plain = client.post("/sample", json={"model": "toy", "n": 8, "seed": 1,
                                         "return_latent": True}).json()
    refined = client.post("/sample", json={"model": "toy", "n": 8, "seed": 1, "return_latent": True,
                                           "mcmc": {"steps": 10, "step_size": 0.1}}).json()
    assert refined["latent"] != plain["latent"]


def test_sample_records_for_tabular(client: TestClient) -> None:
    body = client.post("/sample", json={"model": "events", "n": 4, "seed": 0,
                                        "return_records": True}).json()
    assert len(body["records"]) == 4
    for rec in body["records"]:
        assert set(rec) == {"bytes", "duration", "protocol"}
        assert rec["protocol"] in {"icmp", "tcp", "udp"}
    # Decoding inverts the preprocessing: re-encoding the records gives the same numbers.
    energy = client.post("/energy", json={"model": "events", "records": body["records"]})
    assert energy.status_code == 200


def test_energy_inputs_and_records(client: TestClient) -> None:
    r = client.post("/energy", json={"model": "toy", "inputs": [[0.0, 0.0], [1, -2]]})
    assert r.status_code == 200
    assert len(r.json()["energies"]) == 2
    rec = client.post("/energy", json={"model": "events", "records": [EVENT, ODD_EVENT]}).json()
    assert len(rec["energies"]) == 2
    # records and the equivalent model-space inputs agree
    d = client.get("/models/events").json()
    pre = {f["name"]: f for f in d["input_features"]}
    assert pre["protocol"]["categories"] == ["icmp", "tcp", "udp"]


def test_records_match_inputs(client: TestClient) -> None:
    from meg.bundle import read_manifest

    model_dir = client.app.state.engine.registry.models["events"].path  # type: ignore[attr-defined]
    x = read_manifest(model_dir).preprocessing.transform_records([EVENT])
    a = client.post("/energy", json={"model": "events", "records": [EVENT]}).json()["energies"]
    b = client.post("/energy", json={"model": "events", "inputs": x.tolist()}).json()["energies"]
    assert a == b


def test_encode(client: TestClient) -> None:
    body = client.post("/encode", json={"model": "digits", "inputs": [[0.0] * 64] * 3}).json()
    assert np.asarray(body["latent"]).shape == (3, 16)
    rec = client.post("/encode", json={"model": "events", "records": [EVENT]}).json()
    assert len(rec["latent"]) == 1


def test_anomaly_flags_and_thresholds(client: TestClient) -> None:
    d = client.get("/models/events").json()
    # the energy's calibration is the one /models shows (the bundle's support scores
    # have their own: tests/service/test_support_scores.py)
    body = client.post("/anomaly", json={"model": "events", "records": [EVENT, ODD_EVENT],
                                         "score": "energy"}).json()
    assert body["threshold"] == pytest.approx(d["calibration"]["default_threshold"])
    assert body["target_fpr"] == d["calibration"]["target_fpr"] and body["score"] == "energy"
    for res in body["results"]:
        assert res["is_anomaly"] == (res["p_value"] <= body["target_fpr"])
        assert 0.0 <= res["percentile"] <= 100.0
        assert "explanation" not in res and "unseen" not in res
    assert body["results"][1]["is_anomaly"]  # 950 bytes: far outside the training data
    # An explicit threshold is used as given (score >= threshold); a target rate moves the
    # equivalent threshold.
    t = client.post("/anomaly", json={"model": "events", "records": [EVENT], "threshold": 1e9}).json()
    assert t["threshold"] == 1e9 and not t["results"][0]["is_anomaly"] and "target_fpr" not in t
    lo = client.post("/anomaly", json={"model": "events", "records": [EVENT], "target_fpr": 0.5})
    hi = client.post("/anomaly", json={"model": "events", "records": [EVENT], "target_fpr": 0.05})
    assert lo.json()["threshold"] <= hi.json()["threshold"]


def test_anomaly_explanations(client: TestClient) -> None:
    body = client.post("/anomaly", json={"model": "events", "records": [ODD_EVENT],
                                         "explain": True, "top_k": 3}).json()
    expl = body["results"][0]["explanation"]
    # grouped back to record features (one-hot columns summed), ranked by |gradient|
    assert sorted(e["feature"] for e in expl) == ["bytes", "duration", "protocol"]
    mags = [abs(e["gradient"]) for e in expl]
    assert mags == sorted(mags, reverse=True)
    # model-space inputs explain per column, top_k of them
    body = client.post("/anomaly", json={"model": "digits", "inputs": [[0.1] * 64],
                                         "explain": True, "top_k": 4}).json()
    expl = body["results"][0]["explanation"]
    assert len(expl) == 4 and all(e["feature"].startswith("px") for e in expl)


def test_onnx_and_torch_agree(client: TestClient) -> None:
    """The ONNX path (served energies) and the torch program (gradients, MALA) are the
    same function."""
    for name in ("toy", "events", "digits"):
        model = client.app.state.engine.registry.models[name]  # type: ignore[attr-defined]
        x = np.random.default_rng(0).normal(size=(32, model.data_dim)).astype(np.float32)
        served = client.post("/energy", json={"model": name, "inputs": x.tolist()}).json()
        e_torch, _ = model.torch_energy_and_grad(x)
        np.testing.assert_allclose(served["energies"], e_torch, rtol=1e-4, atol=1e-5)
        z = np.random.default_rng(1).normal(size=(8, model.latent_dim)).astype(np.float32)
        np.testing.assert_allclose(model.infer("generate", z), model.torch_generate(z),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model,size", [("digits", None), ("toy", (480, 480)), ("events", None)])
def test_sample_png(client: TestClient, model: str, size: tuple[int, int] | None) -> None:
    r = client.get("/sample.png", params={"model": model, "n": 16, "seed": 0, "mcmc_steps": 2})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    if size:
        assert img.size == size


def test_metrics_move_with_traffic(client: TestClient) -> None:
    before = client.get("/metrics").text
    client.post("/energy", json={"model": "toy", "inputs": [[0.0, 0.0]]})
    client.post("/sample", json={"model": "toy", "n": 7, "seed": 0})
    client.post("/sample", json={"model": "toy", "n": 3, "seed": 0, "mcmc": {"steps": 2}})
    client.post("/anomaly", json={"model": "events", "records": [ODD_EVENT]})
    client.post("/energy", json={"model": "nope", "inputs": [[0.0, 0.0]]})
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    after = r.text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("meg_requests_total", endpoint="/energy", model="toy", status="200") == 1
    assert delta("meg_requests_total", endpoint="/energy", model="", status="404") == 1
    assert delta("meg_request_duration_seconds_count", endpoint="/sample", model="toy") == 2
    assert delta("meg_samples_total", model="toy", mcmc="false") == 7
    assert delta("meg_samples_total", model="toy", mcmc="true") == 3
    assert delta("meg_mala_acceptance_count", model="toy") == 1
    assert delta("meg_anomaly_scored_total", model="events") == 1
    assert delta("meg_anomalies_flagged_total", model="events") == 1
    assert delta("meg_batch_size_count", model="toy", op="energy") >= 1
    assert delta("meg_queue_wait_seconds_count", model="toy", op="generate") >= 1
    assert delta("meg_inference_duration_seconds_count", model="toy", op="energy",
                 backend="onnxruntime") >= 1
    assert delta("meg_inference_duration_seconds_count", model="toy", op="mala",
                 backend="torch") == 1
    # The labels say where the model runs: ONNX Runtime's provider and torch's device
    # (cuda on a GPU machine).
    digits = client.app.state.engine.registry.models["digits"]  # type: ignore[attr-defined]
    assert metric_value(after, "meg_model_info", model="digits", provider=digits.providers[0],
                        device=digits.device) == 1
    assert digits.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "meg_requests_in_flight" in after and "meg_queue_depth" in after


def test_openapi_has_examples_and_verb_noun_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ops = {op["operationId"].split("_")[0] + "_" + op["operationId"].split("_")[1]
           for path in spec["paths"].values() for op in path.values()}
    assert {"create_samples", "score_energy", "detect_anomalies", "encode_inputs"} <= ops
    assert spec["components"]["schemas"]["SampleRequest"]["examples"]


def test_sample_binary(client: TestClient) -> None:
    req = {"model": "digits", "n": 5, "seed": 9}
    r = client.post("/sample", json=req, headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-meg-shape"] == "5,64" and r.headers["x-meg-seed"] == "9"
    x = np.frombuffer(r.content, dtype="<f4").reshape(5, 64)
    np.testing.assert_array_equal(x, np.asarray(client.post("/sample", json=req).json()["samples"],
                                                dtype=np.float32))
