"""Dynamic batching: concurrent requests coalesce without changing any result; a full
queue answers 503 + Retry-After; a missed deadline answers 504."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from svc_helpers import metric_value, serve_app

from service.settings import Settings

pytestmark = pytest.mark.anyio


def _settings(models: Path, **kw: Any) -> Settings:
    return Settings(models_dir=models, log_level="WARNING", inference_workers=2, **kw)


async def test_batched_equals_unbatched(toy_only: Path) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(32, 2)).astype(np.float32) * 3
    # A long delay so that all 32 concurrent requests land in one or two batches.
    async with serve_app(_settings(toy_only, max_delay_ms=200, max_batch_size=64)) as (app, c):
        # Unbatched reference: one ONNX call per row on the same session.
        model = app.state.engine.registry.models["toy"]
        single = [float(model.infer("energy", r[None])[0]) for r in rows]
        before = (await c.get("/metrics")).text
        responses = await asyncio.gather(*(
            c.post("/energy", json={"model": "toy", "inputs": [r.tolist()]}) for r in rows))
        after = (await c.get("/metrics")).text
        batched = [r.json()["energies"][0] for r in responses]
        # Mixed request sizes split back correctly too.
        sizes = [1, 3, 5, 7, 16]
        chunks = np.split(rows, np.cumsum(sizes)[:-1])
        mixed = await asyncio.gather(*(
            c.post("/energy", json={"model": "toy", "inputs": ch.tolist()}) for ch in chunks))
        whole = (await c.post("/energy", json={"model": "toy", "inputs": rows.tolist()})).json()
    # Energies travel as float32 (shortest round-trip repr): compare as float32, exactly.
    f32 = lambda v: np.asarray(v, dtype=np.float32).tolist()  # noqa: E731
    assert f32(batched) == f32(single)  # row for row, exactly
    assert f32(sum((r.json()["energies"] for r in mixed), [])) == f32(whole["energies"]) == f32(single)
    calls = (metric_value(after, "meg_batch_size_count", model="toy", op="energy")
             - metric_value(before, "meg_batch_size_count", model="toy", op="energy"))
    rows_run = (metric_value(after, "meg_batch_size_sum", model="toy", op="energy")
                - metric_value(before, "meg_batch_size_sum", model="toy", op="energy"))
    assert rows_run == 32 and calls < 32 / 4, f"{calls} calls for 32 rows: not batched"


async def test_batching_disabled(toy_only: Path) -> None:
    async with serve_app(_settings(toy_only, max_batch_size=1)) as (_, c):
        before = (await c.get("/metrics")).text
        responses = await asyncio.gather(*(
            c.post("/energy", json={"model": "toy", "inputs": [[float(i), 0.0]]}) for i in range(8)))
        after = (await c.get("/metrics")).text
    assert all(r.status_code == 200 for r in responses)
    calls = (metric_value(after, "meg_batch_size_count", model="toy", op="energy")
             - metric_value(before, "meg_batch_size_count", model="toy", op="energy"))
    assert calls == 8


def _slow(app: Any, seconds: float) -> None:
    """Make every ONNX call of `toy` take `seconds` (patched on the loaded model)."""
    model = app.state.engine.registry.models["toy"]
    fast = model.infer

    def slow(op: str, x: np.ndarray) -> np.ndarray:
        time.sleep(seconds)
        return fast(op, x)

    model.infer = slow


@pytest.mark.parametrize("batching", [True, False])
async def test_queue_full_503(toy_only: Path, batching: bool) -> None:
    kw = {"max_delay_ms": 1} if batching else {"max_batch_size": 1}
    async with serve_app(_settings(toy_only, queue_size=2, **kw)) as (app, c):
        _slow(app, 0.3)
        responses = await asyncio.gather(*(
            c.post("/energy", json={"model": "toy", "inputs": [[0.0, 0.0]]}) for _ in range(8)))
        text = (await c.get("/metrics")).text
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes, codes
    full = next(r for r in responses if r.status_code == 503)
    assert full.headers["retry-after"] == "1"
    assert full.json()["error"]["code"] == "queue_full"
    assert metric_value(text, "meg_requests_total", endpoint="/energy", status="503") >= 1


@pytest.mark.parametrize("batching", [True, False])
async def test_deadline_504(toy_only: Path, batching: bool) -> None:
    kw = {"max_delay_ms": 1} if batching else {"max_batch_size": 1}
    async with serve_app(_settings(toy_only, request_timeout_s=0.2, **kw)) as (app, c):
        _slow(app, 0.5)
        t0 = time.perf_counter()
        r = await c.post("/energy", json={"model": "toy", "inputs": [[0.0, 0.0]]})
        elapsed = time.perf_counter() - t0
        # Queued behind a slow call: the second request times out while waiting.
        both = await asyncio.gather(*(
            c.post("/sample", json={"model": "toy", "n": 1}) for _ in range(2)))
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert elapsed < 0.45
    assert all(b.status_code == 504 for b in both)


async def test_mala_deadline_504(toy_only: Path) -> None:
    async with serve_app(_settings(toy_only, request_timeout_s=0.05)) as (_, c):
        r = await c.post("/sample", json={"model": "toy", "n": 2000,
                                          "mcmc": {"steps": 1000}})
    assert r.status_code == 504


async def test_batcher_never_mixes_models(models_dir: Path) -> None:
    async with serve_app(_settings(models_dir, max_delay_ms=100)) as (_, c):
        reqs = [("toy", [[0.1, 0.2]]), ("events", [[0.1, 0.2, 1.0, 0.0, 0.0]]),
                ("digits", [[0.0] * 64])] * 4
        out = await asyncio.gather(*(c.post("/energy", json={"model": m, "inputs": x})
                                     for m, x in reqs))
        single = {m: (await c.post("/energy", json={"model": m, "inputs": x})).json()["energies"]
                  for m, x in reqs[:3]}
    for (m, _), r in zip(reqs, out, strict=True):
        assert r.json()["model"] == m and r.json()["energies"] == single[m]


async def test_full_batch_request_skips_the_delay(toy_only: Path) -> None:
    """A request that fills a batch alone runs at once; a small one waits for company."""
    async with serve_app(_settings(toy_only, max_delay_ms=800, max_batch_size=4)) as (_, c):
        t0 = time.perf_counter()
        r = await c.post("/energy", json={"model": "toy", "inputs": [[0.0, 0.0]] * 8})
        big = time.perf_counter() - t0
        t0 = time.perf_counter()
        r1 = await c.post("/energy", json={"model": "toy", "inputs": [[0.0, 0.0]]})
        small = time.perf_counter() - t0
    assert r.status_code == 200 and r1.status_code == 200
    assert big < 0.4 <= 0.7 < small, (big, small)


def _direct_batcher(fn: Any, inline_s: float) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    from service.engine.batching import DynamicBatcher
    from service.metrics import Metrics

    return DynamicBatcher("m", "energy", fn, max_batch_size=64, max_delay_s=0.001, queue_size=64,
                          executor=ThreadPoolExecutor(1), metrics=Metrics(), inline_s=inline_s)


@pytest.mark.parametrize(("cost_s", "inline_s", "inline_expected"),
                         [(0.0, 0.0005, True), (0.0, 0.0, False), (0.003, 0.0005, False)])
async def test_cheap_batches_run_on_the_event_loop(cost_s: float, inline_s: float,
                                                   inline_expected: bool) -> None:
    """Once calls have been measured under `inline_s` a batch runs on the loop's own
    thread; the first call, an expensive one, or inline_s 0 go to the pool."""
    import threading

    threads: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        if cost_s:
            time.sleep(cost_s)
        return x.sum(axis=1)

    b = _direct_batcher(fn, inline_s)
    loop_thread = threading.get_ident()
    deadline = asyncio.get_running_loop().time() + 10
    for i in range(4):
        out = await b.submit(np.full((1, 2), float(i), np.float32), deadline)
        assert out.tolist() == [2.0 * i]
    await b.close()
    assert threads[0] != loop_thread  # nothing measured yet: the pool
    assert all((t == loop_thread) == inline_expected for t in threads[1:])


async def test_requests_arriving_while_collecting_join_one_batch() -> None:
    """Requests arriving while a batch is collected join it without waking the worker
    for each one: one call for all of them."""
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x.sum(axis=1)

    b = _direct_batcher(fn, 0.0)
    b.max_delay_s = 0.05
    deadline = asyncio.get_running_loop().time() + 10
    outs = await asyncio.gather(*(b.submit(np.full((1, 2), float(i), np.float32), deadline)
                                  for i in range(20)))
    await b.close()
    assert [o.tolist() for o in outs] == [[2.0 * i] for i in range(20)]
    assert calls == [20]
