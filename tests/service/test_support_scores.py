"""/anomaly's `score`: energy, knn and energy+knn (meg/support.py), from the bundle's
reference rows and calibration; the response names the score it used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from meg import bundle as B
from meg.support import VARIANTS, load_reference

EVENT = {"bytes": 100.0, "duration": 1.5, "protocol": "tcp"}
ODD_EVENT = {"bytes": 950.0, "duration": 1.5, "protocol": "tcp"}


def _model(client: TestClient, name: str):  # noqa: ANN202 - a service LoadedModel
    return client.app.state.engine.registry.models[name]  # type: ignore[attr-defined]


def test_bundles_carry_the_reference_set(tiny_models_dir: Path) -> None:
    for name in ("toy", "events"):
        man = B.read_manifest(tiny_models_dir / name)
        assert man.support is not None and man.support.reference in man.files
        ref = load_reference(tiny_models_dir / name / man.support.reference, man.data.dim)
        assert len(np.unique(ref, axis=0)) == len(ref)  # deduplicated
        assert set(man.support.calibration) == {"knn", "energy+knn"}
        assert man.support.default_score in VARIANTS
    # image bundles serve the energy only
    assert B.read_manifest(tiny_models_dir / "digits").support is None


@pytest.mark.parametrize("score", VARIANTS)
def test_anomaly_answers_with_each_score(client: TestClient, score: str) -> None:
    body = client.post("/anomaly", json={"model": "events", "records": [EVENT, ODD_EVENT],
                                         "score": score}).json()
    assert body["score"] == score
    cal = _model(client, "events").calibration(score)
    assert cal is not None and cal.score == score
    scores = np.array([r["score"] for r in body["results"]])
    p = np.array([r["p_value"] for r in body["results"]])
    np.testing.assert_allclose(p, (1 + (cal.array[None, :] >= scores[:, None] - 1e-9).sum(1))
                               / (cal.n + 1))
    assert scores[1] > scores[0]  # 950 bytes lies far from every training row
    for r in body["results"]:
        assert r["is_anomaly"] == (r["p_value"] <= body["target_fpr"])


def test_knn_score_is_the_distance_to_the_nearest_reference_row(client: TestClient) -> None:
    model = _model(client, "toy")
    ref = model.support.reference.astype(np.float64)
    x = np.random.default_rng(0).uniform(-2, 2, size=(40, 2))
    body = client.post("/anomaly", json={"model": "toy", "inputs": x.tolist(),
                                         "score": "knn"}).json()
    x32 = x.astype(np.float32).astype(np.float64)  # the service scores float32 rows
    want = np.sqrt(((x32[:, None, :] - ref[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose([r["score"] for r in body["results"]], want, rtol=1e-9, atol=1e-9)


def test_default_score_is_the_bundles(client: TestClient) -> None:
    detail = client.get("/models/events").json()
    assert detail["default_score"] == _model(client, "events").manifest.support.default_score
    assert detail["scores"] == list(VARIANTS)
    body = client.post("/anomaly", json={"model": "events", "records": [EVENT]}).json()
    assert body["score"] == detail["default_score"]
    assert client.get("/models/digits").json()["scores"] == ["energy"]


def test_unavailable_or_unknown_score_is_a_4xx(client: TestClient) -> None:
    r = client.post("/anomaly", json={"model": "digits", "inputs": [[0.1] * 64], "score": "knn"})
    assert r.status_code == 422 and "score_unavailable" in r.text and "energy" in r.text
    r = client.post("/anomaly", json={"model": "events", "records": [EVENT], "score": "density"})
    assert r.status_code == 422
    ok = client.post("/anomaly", json={"model": "digits", "inputs": [[0.1] * 64],
                                       "score": "energy"})
    assert ok.status_code == 200 and ok.json()["score"] == "energy"


def test_reference_file_is_checked_and_never_unpickled(tiny_models_dir: Path,
                                                       tmp_path: Path) -> None:
    import json
    import shutil

    from service.engine.models import load_support

    bundle = tmp_path / "events"
    shutil.copytree(tiny_models_dir / "events", bundle)
    raw = json.loads((bundle / B.MANIFEST).read_text())
    ref_name = raw["support"]["reference"]
    # a manifest naming a reference file it lists no checksum for is refused
    del raw["files"][ref_name]
    (bundle / B.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(B.BundleError, match=ref_name):
        B.read_manifest(bundle)
    # a pickled object array in its place (checksum updated) is refused, naming the file
    np.save(bundle / ref_name, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    raw["files"][ref_name] = B.sha256_file(bundle / ref_name)
    (bundle / B.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(B.BundleError, match=ref_name):
        load_support(bundle, B.read_manifest(bundle))
