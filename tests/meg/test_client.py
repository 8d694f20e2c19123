"""meg.client against the in-process app: the sync client through FastAPI's TestClient,
the async one through httpx's ASGI transport; typed results equal the raw answers, and
errors carry the server's code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from meg.client import APIError, AsyncClient, Client, ConnectionFailed
from service.main import create_app
from service.settings import Settings

KEY = "client-key"


def _settings(models: Path) -> Settings:
    return Settings(models_dir=models, log_level="WARNING", inference_workers=2,
                    api_keys=KEY, max_rows=100)


@pytest.fixture(scope="module")
def app_client(tiny_models_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tiny_models_dir))) as tc:
        yield tc


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_sync_client_matches_the_api(app_client: TestClient) -> None:
    c = Client(api_key=KEY, http=app_client)
    auth = {"X-API-Key": KEY}
    s = c.sample(8, model="toy", seed=3, return_latent=True)
    raw = app_client.post("/sample", json={"model": "toy", "n": 8, "seed": 3},
                          headers=auth).json()
    assert s.seed == 3 and s.samples.dtype == np.float32 and s.latent is not None
    np.testing.assert_array_equal(s.samples, np.asarray(raw["samples"], dtype=np.float32))

    e = c.energy(s.samples, model="toy")
    want = app_client.post("/energy", json={"model": "toy", "inputs": raw["samples"]},
                           headers=auth).json()["energies"]
    np.testing.assert_array_equal(e.energies, np.asarray(want, dtype=np.float32))
    assert c.encode(s.samples.tolist(), model="toy").latent.shape == s.latent.shape

    a = c.anomaly(s.samples, model="toy", target_fpr=0.5)
    body = app_client.post("/anomaly", json={"model": "toy", "inputs": raw["samples"],
                                             "target_fpr": 0.5}, headers=auth).json()
    assert a.target_fpr == 0.5 and a.threshold == body["threshold"]
    assert a.is_anomaly.tolist() == [r["is_anomaly"] for r in body["results"]]
    np.testing.assert_array_equal(a.p_values, [r["p_value"] for r in body["results"]])
    assert c.anomaly(s.samples, model="toy", threshold=-1e30).is_anomaly.all()
    energy = c.anomaly(s.samples, model="toy", score="energy")
    assert energy.score == "energy"
    np.testing.assert_allclose(energy.scores, e.energies, rtol=1e-6)

    models = c.models()
    assert {m["name"] for m in models["models"]} == {"toy", "events", "digits"}
    assert c.model("events")["input_features"]
    rec = c.sample(2, model="events", seed=0, return_records=True).records
    assert rec is not None and len(rec) == 2
    assert c.anomaly(records=rec, model="events", target_fpr=0.5).scores.shape == (2,)


def test_sync_client_errors(app_client: TestClient, tiny_models_dir: Path) -> None:
    c = Client(api_key=KEY, http=app_client)
    with pytest.raises(APIError) as e:
        c.energy([[0.0, 0.0, 0.0]], model="toy")
    assert (e.value.status, e.value.code) == (422, "wrong_dimension")
    assert e.value.field == "inputs[0]"
    with pytest.raises(APIError) as e:
        c.sample(1, model="nope")
    assert (e.value.status, e.value.code) == (404, "model_not_found")
    with pytest.raises(APIError) as e:
        Client(http=app_client).models()  # no key
    assert e.value.status == 401
    with pytest.raises(ValueError, match="exactly one"):
        c.energy(model="toy")
    with Client("http://127.0.0.1:9", timeout=2) as dead, pytest.raises(ConnectionFailed):
        dead.models()


@pytest.mark.anyio
async def test_async_client(tiny_models_dir: Path) -> None:
    app = create_app(_settings(tiny_models_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meg.test") as h:
            c = AsyncClient(api_key=KEY, http=h)
            s = await c.sample(4, model="digits", seed=1)
            again = await c.sample(4, model="digits", seed=1)
            np.testing.assert_array_equal(s.samples, again.samples)
            e = await c.energy(s.samples, model="digits")
            a = await c.anomaly(s.samples, model="digits")
            np.testing.assert_allclose(a.scores, e.energies, rtol=1e-6)
            assert (await c.encode(s.samples, model="digits")).latent.shape[0] == 4
            assert (await c.models())["default"] == "digits"
            with pytest.raises(APIError) as err:
                await c.anomaly([[0.0] * 64] * 101, model="digits")
            assert (err.value.status, err.value.code) == (422, "too_many_rows")
