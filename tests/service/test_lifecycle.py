"""Start-up, loading, polling, API keys, a real uvicorn process and its clean shutdown;
the model lifecycle: removal, replacement, the default model, per-model readiness and
load errors that name the file at fault."""

from __future__ import annotations

import asyncio
import json
import logging
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
from svc_helpers import metric_value, serve_app, wait_ready

from meg import bundle as B
from service.engine.models import ModelRegistry, load_model
from service.metrics import Metrics
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
        wait_ready(proc, base)
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


# --------------------------------------------------------------------------- lifecycle


async def _until(c: httpx.AsyncClient, check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check(c):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _move_in(src: Path, root: Path, name: str, tmp: Path) -> Path:
    """Copy a bundle next to the models dir, then rename it in (an atomic appearance)."""
    staging = tmp / f"staging-{name}-{time.monotonic_ns()}"
    shutil.copytree(src, staging)
    staging.rename(root / name)
    return root / name


@pytest.mark.anyio
async def test_removed_bundle_is_unloaded(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    for name in ("toy", "events"):
        shutil.copytree(models_dir / name, root / name)
    async with serve_app(_settings(root, poll_interval_s=0.1)) as (_, c):
        assert metric_value((await c.get("/metrics")).text, "meg_model_info", model="events") == 1
        assert (await c.get("/models/events/ready")).status_code == 200
        shutil.rmtree(root / "events")

        async def gone(c: httpx.AsyncClient) -> bool:
            return [m["name"] for m in (await c.get("/models")).json()["models"]] == ["toy"]

        await _until(c, gone, "removed bundle still listed")
        assert "events" not in (await c.get("/models")).json()["failed"]
        text = (await c.get("/metrics")).text
        assert metric_value(text, "meg_model_info", model="events") == 0
        assert not [ln for ln in text.splitlines()
                    if ln.startswith("meg_model_info{") and 'model="events"' in ln]
        assert metric_value(text, "meg_model_info", model="toy") == 1
        r = await c.post("/energy", json={"model": "events", "inputs": [[0.0] * 5]})
        assert r.status_code == 404 and "unknown model" in r.json()["error"]["message"]
        assert (await c.get("/models/events/ready")).status_code == 404


@pytest.mark.anyio
async def test_replaced_bundle_swaps_in_without_failing_requests(models_dir: Path,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "toy", root / "toy")
    old_version = B.read_manifest(root / "toy").version
    new = tmp_path / "new-toy"
    shutil.copytree(models_dir / "toy", new)
    raw = json.loads((new / B.MANIFEST).read_text())
    raw["version"] = "0123456789ab"
    (new / B.MANIFEST).write_text(json.dumps(raw))
    x = np.random.default_rng(0).normal(size=(8, 2)).tolist()
    async with serve_app(_settings(root, poll_interval_s=0.05)) as (app, c):
        want = (await c.post("/energy", json={"model": "toy", "inputs": x})).json()["energies"]
        r = await c.post("/sample", json={"model": "toy", "n": 2, "mcmc": {"steps": 2}})
        assert r.status_code == 200  # the old version now has a chain loop too
        engine = app.state.engine
        assert ("toy", old_version) in engine.chain_loops
        seen: list[tuple[int, str | None]] = []
        stop = asyncio.Event()

        async def hammer() -> None:
            while not stop.is_set():
                r = await c.post("/energy", json={"inputs": x})  # the default model
                seen.append((r.status_code, r.json().get("version")))
                if r.status_code == 200:  # the same weights under either version
                    np.testing.assert_allclose(r.json()["energies"], want, rtol=1e-6)

        tasks = [asyncio.create_task(hammer()) for _ in range(4)]
        await asyncio.sleep(0.2)
        # What export does: the old directory renamed away, the new one renamed in.
        (root / "toy").rename(tmp_path / "old-toy")
        new.rename(root / "toy")

        async def swapped(c: httpx.AsyncClient) -> bool:
            return (await c.get("/models")).json()["models"][0]["version"] == "0123456789ab"

        await _until(c, swapped, "new version never served")
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)
        listing = (await c.get("/models")).json()
        metrics = (await c.get("/metrics")).text

        async def released(c: httpx.AsyncClient) -> bool:  # the old version's threads
            return (("toy", old_version) not in engine.chain_loops
                    and all(k[1] != old_version for k in engine.batchers._batchers))

        await _until(c, released, "the old version's batchers and chain loop were kept")
    assert {code for code, _ in seen} == {200}, "a request failed during the swap"
    versions = [v for _, v in seen]
    assert versions[0] == old_version and versions[-1] == "0123456789ab"
    assert listing["default"] == "toy" and listing["failed"] == {}
    assert metric_value(metrics, "meg_model_info", model="toy", version=old_version) == 0
    assert metric_value(metrics, "meg_model_info", model="toy", version="0123456789ab") == 1


@pytest.mark.anyio
async def test_failed_new_version_keeps_the_old_one_serving(models_dir: Path,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "toy", root / "toy")
    async with serve_app(_settings(root, poll_interval_s=0.05)) as (_, c):
        old = (await c.get("/models")).json()["models"][0]["version"]
        raw = json.loads((root / "toy" / B.MANIFEST).read_text())
        raw["version"] = "badbadbadbad"
        (root / "toy" / B.WEIGHTS).write_bytes(b"not safetensors")
        (root / "toy" / B.MANIFEST).write_text(json.dumps(raw))

        async def failed(c: httpx.AsyncClient) -> bool:
            return "toy" in (await c.get("/models")).json()["failed"]

        await _until(c, failed, "broken new version not reported")
        listing = (await c.get("/models")).json()
        assert listing["models"][0]["version"] == old
        assert "weights.safetensors" in listing["failed"]["toy"]
        assert f"version {old} keeps serving" in listing["failed"]["toy"]
        r = await c.get("/models/toy/ready")
        assert r.status_code == 200 and r.json()["version"] == old
        assert (await c.post("/energy", json={"model": "toy", "inputs": [[0, 0]]})
                ).status_code == 200


@pytest.mark.anyio
async def test_default_model_is_chosen_once(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "toy", root / "toy")
    async with serve_app(_settings(root, poll_interval_s=0.05)) as (_, c):
        assert (await c.get("/models")).json()["default"] == "toy"
        # "digits" would win a fresh start, but appearing later it must not take over.
        _move_in(models_dir / "digits", root, "digits", tmp_path)
        _move_in(models_dir / "events", root, "events", tmp_path)

        async def all_loaded(c: httpx.AsyncClient) -> bool:
            return len((await c.get("/models")).json()["models"]) == 3

        await _until(c, all_loaded, "new bundles not loaded")
        assert (await c.get("/models")).json()["default"] == "toy"
        assert (await c.post("/sample", json={"n": 1, "seed": 0})).json()["model"] == "toy"


@pytest.mark.anyio
async def test_default_model_setting_and_fresh_start(models_dir: Path) -> None:
    async with serve_app(_settings(models_dir)) as (_, c):
        assert (await c.get("/models")).json()["default"] == "digits"
    async with serve_app(_settings(models_dir, default_model="events")) as (_, c):
        assert (await c.get("/models")).json()["default"] == "events"
        assert (await c.post("/sample", json={"n": 1, "seed": 0})).json()["model"] == "events"


@pytest.mark.anyio
async def test_per_model_readiness(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "toy", root / "toy")
    shutil.copytree(models_dir / "events", root / "broken")
    (root / "broken" / B.ENERGY_ONNX).write_bytes(b"garbage")
    # A long poll interval: a bundle that appears stays "loading" (on disk, not loaded).
    async with serve_app(_settings(root, poll_interval_s=3600, api_keys="k")) as (_, c):
        r = await c.get("/models/toy/ready")  # open, like /readyz
        assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["version"]
        r = await c.get("/models/broken/ready")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "energy.onnx" in r.json()["reason"]
        _move_in(models_dir / "digits", root, "digits", tmp_path)
        r = await c.get("/models/digits/ready")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        for name in ("nope", "..", "a b"):
            assert (await c.get(f"/models/{name}/ready")).status_code == 404, name


def test_latent_size_mismatch_names_the_weights_file(models_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "toy"
    shutil.copytree(models_dir / "toy", d)
    raw = json.loads((d / B.MANIFEST).read_text())
    raw["latent_dim"] = raw["architecture"]["latent_dim"] = raw["latent_dim"] + 1
    (d / B.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(B.BundleError) as e:
        load_model(d, _settings(tmp_path))
    assert str(d / B.WEIGHTS) in str(e.value) and "shape" in str(e.value)
    # The manifest contradicting itself is the manifest's fault.
    raw["latent_dim"] -= 1
    (d / B.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(B.BundleError, match=r"manifest\.json: architecture\.latent_dim"):
        load_model(d, _settings(tmp_path))


def test_onnx_width_mismatch_names_the_graph(models_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "toy"
    shutil.copytree(models_dir / "toy", d)
    events = B.read_manifest(models_dir / "events")
    shutil.copy(models_dir / "events" / B.ENERGY_ONNX, d / B.ENERGY_ONNX)  # wider input
    raw = json.loads((d / B.MANIFEST).read_text())
    raw["files"][B.ENERGY_ONNX] = B.sha256_file(d / B.ENERGY_ONNX)
    (d / B.MANIFEST).write_text(json.dumps(raw))
    assert events.data.dim != 2
    with pytest.raises(B.BundleError, match=r"energy\.onnx: input 'x' has width"):
        load_model(d, _settings(tmp_path))


def test_invalid_directory_name_logged_once(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "toy", root / "toy")
    shutil.copytree(models_dir / "toy", root / "bad name")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("service.engine.models")
    logger.addHandler(handler)
    try:
        reg = ModelRegistry(_settings(root), Metrics())
        for _ in range(3):
            reg.scan()
        assert list(reg.models) == ["toy"]
        bad = [r for r in records if "invalid directory name" in r.getMessage()]
        assert len(bad) == 1 and "bad name" in bad[0].getMessage()
        # Gone and back: worth one more line.
        (root / "bad name").rename(tmp_path / "away")
        reg.scan()
        (tmp_path / "away").rename(root / "bad name")
        reg.scan()
        reg.scan()
        assert len([r for r in records if "invalid directory name" in r.getMessage()]) == 2
    finally:
        logger.removeHandler(handler)
