"""Start-up, loading, polling, API keys, a real uvicorn process and its clean shutdown."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from svc_helpers import serve_app

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _settings(models: Path, **kw: Any) -> Settings:
    return Settings(models_dir=models, log_level="WARNING", inference_workers=2, **kw)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_api_keys(toy_only: Path) -> None:
    async with serve_app(_settings(toy_only, api_keys="k1, s3cret")) as (_, c):
        req = {"model": "toy", "n": 1, "seed": 0}
        r = await c.post("/sample", json=req)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert (await c.post("/sample", json=req, headers={"Authorization": "Bearer s3cret"})
                ).status_code == 200
        assert (await c.post("/sample", json=req, headers={"X-API-Key": "k1"})).status_code == 200
        for bad in ({"Authorization": "Bearer nope"}, {"X-API-Key": "s3cre"},
                    {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer "}):
            r = await c.post("/sample", json=req, headers=bad)
            assert r.status_code == 401, bad
        assert (await c.get("/models")).status_code == 401
        assert (await c.get("/models/toy")).status_code == 401
        assert (await c.get("/sample.png?model=toy")).status_code == 401
        # health, readiness and metrics stay open
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(path)).status_code == 200, path


@pytest.mark.anyio
async def test_broken_bundle_reported_others_serve(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "toy", root / "toy")
    shutil.copytree(models_dir / "events", root / "broken")
    with open(root / "broken" / "energy.onnx", "r+b") as f:  # corrupt one file
        f.seek(100)
        f.write(b"\x00garbage\x00")
    async with serve_app(_settings(root)) as (_, c):
        assert (await c.get("/readyz")).status_code == 200
        listing = (await c.get("/models")).json()
        assert [m["name"] for m in listing["models"]] == ["toy"]
        assert "energy.onnx" in listing["failed"]["broken"]
        assert "checksum" in listing["failed"]["broken"]
        r = await c.post("/energy", json={"model": "broken", "inputs": [[0] * 5]})
        assert r.status_code == 404 and "failed to load" in r.json()["error"]["message"]
        assert (await c.post("/energy", json={"model": "toy", "inputs": [[0, 0]]})).status_code == 200


@pytest.mark.anyio
async def test_empty_models_dir_then_bundle_appears(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    async with serve_app(_settings(root, poll_interval_s=0.2)) as (_, c):
        assert (await c.get("/healthz")).status_code == 200
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["models"] == []
        r = await c.post("/sample", json={"n": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_model"
        # Copy next to it, then rename: the poller never sees a half-copied bundle.
        shutil.copytree(models_dir / "toy", tmp_path / "staging")
        (tmp_path / "staging").rename(root / "toy")
        deadline = time.monotonic() + 10
        while (await c.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "bundle not picked up"
            await asyncio.sleep(0.1)
        assert (await c.post("/sample", json={"n": 1})).json()["model"] == "toy"


@pytest.mark.anyio
async def test_failed_bundle_retried_when_fixed(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "toy", root / "toy")
    (root / "toy" / "weights.safetensors").unlink()
    async with serve_app(_settings(root, poll_interval_s=0.2)) as (_, c):
        assert "toy" in (await c.get("/models")).json()["failed"]
        shutil.copy(models_dir / "toy" / "weights.safetensors", root / "toy" / "weights.safetensors")
        deadline = time.monotonic() + 10
        while (await c.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "fixed bundle not reloaded"
            await asyncio.sleep(0.1)
        assert (await c.get("/models")).json()["failed"] == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uvicorn_subprocess_serves_and_stops_on_sigterm(toy_only: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MEG_MODELS_DIR": str(toy_only), "MEG_LOG_LEVEL": "INFO",
           "MEG_INFERENCE_WORKERS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
         "--port", str(port), "--timeout-graceful-shutdown", "10"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        r = httpx.post(f"{base}/sample", json={"model": "toy", "n": 4, "seed": 0},
                       headers={"X-Request-ID": "sub-1"}, timeout=10)
        assert r.status_code == 200 and len(r.json()["samples"]) == 4
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown, so the exit is
    # "killed by SIGTERM" once the app has shut down cleanly (meg serve exits 0).
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Traceback" not in out
    # Structured logs: one JSON object per line, the request id on the request's line.
    import json

    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    access = [rec for rec in lines if rec.get("path") == "/sample"]
    assert access and access[0]["request_id"] == "sub-1" and access[0]["status"] == 200
    assert {"time", "level", "message", "method", "duration_ms", "model"} <= set(access[0])
    messages = [rec["message"] for rec in lines]
    assert "shut down" in messages and "Application shutdown complete." in messages


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.anyio
async def test_gpu_paths(toy_only: Path) -> None:
    import onnxruntime as ort

    async with serve_app(_settings(toy_only, device="cuda")) as (app, c):
        model = app.state.engine.registry.models["toy"]
        assert model.torch_device.type == "cuda"
        if "CUDAExecutionProvider" in ort.get_available_providers():
            assert model.providers[0] == "CUDAExecutionProvider"
        r = await c.post("/sample", json={"model": "toy", "n": 64, "seed": 0,
                                          "mcmc": {"steps": 5}})
        assert r.status_code == 200
        x = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
        e = (await c.post("/energy", json={"model": "toy", "inputs": x.tolist()})).json()
        np.testing.assert_allclose(e["energies"], model.torch_energy_and_grad(x)[0], rtol=1e-3,
                                   atol=1e-4)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["events", "toy", "digits"])
def test_sample_png_one_sample_is_quick(client: Any, model: str) -> None:
    """Issue 11: /sample.png with n=1 of a tabular model hung the whole server."""
    for n in (1, 2):
        t0 = time.perf_counter()
        r = client.get(f"/sample.png?model={model}&n={n}&seed=0")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert time.perf_counter() - t0 < 2.0
