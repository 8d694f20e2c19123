"""What the per-request fast paths keep: the API key is enforced with or without the
request middleware, the middleware's route cache stays bounded and answers like a fresh
match, the heap is frozen once startup completes, the batcher's single deadline timer
fails exactly the requests past their deadline, request ids and JSON log lines keep
their shape."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.engine.batching import DynamicBatcher
from service.engine.errors import DeadlineExceeded
from service.logs import JsonFormatter, clean_request_id
from service.main import create_app
from service.metrics import Metrics
from service.middleware import _ROUTE_CACHE_SIZE, RequestMiddleware, parse_json
from service.settings import Settings

pytestmark = pytest.mark.anyio

ROW = {"model": "toy", "inputs": [[0.1, 0.2]]}


async def _post_energy(app: Any, headers: dict[str, str]) -> httpx.Response:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meg.test") as c:
            return await c.post("/energy", json=ROW, headers=headers)


@pytest.mark.parametrize("middleware", [True, False])
async def test_api_key_enforced_with_and_without_the_middleware(toy_only: Path,
                                                                middleware: bool) -> None:
    def app() -> Any:
        a = create_app(Settings(models_dir=toy_only, log_level="WARNING", api_keys="k1"))
        if not middleware:  # before the first request builds the middleware stack
            a.user_middleware = [m for m in a.user_middleware if m.cls is not RequestMiddleware]
        return a

    missing = await _post_energy(app(), {})
    wrong = await _post_energy(app(), {"X-API-Key": "nope"})
    right = await _post_energy(app(), {"Authorization": "Bearer k1"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401 and "invalid" in wrong.json()["error"]["message"]
    assert right.status_code == 200 and len(right.json()["energies"]) == 1


def test_route_cache_is_bounded_and_matches_like_a_fresh_lookup(make_settings: Any) -> None:
    app = create_app(make_settings())
    mw = RequestMiddleware(app.router, Metrics(), 1024, router=app.router)

    def scope(method: str, path: str) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": "",
                "headers": [], "query_string": b""}

    for method, path in [("POST", "/energy"), ("GET", "/energy"), ("GET", "/models/toy"),
                         ("GET", "/models/other"), ("GET", "/healthz"), ("GET", "/nowhere"),
                         ("POST", "/v2/models/toy/infer")]:
        cached, again, fresh = (mw._route(scope(method, path)), mw._route(scope(method, path)),
                                mw._match(scope(method, path)))
        assert cached == again == fresh, (method, path)
    assert mw._route(scope("POST", "/energy")).needs_key
    assert mw._route(scope("GET", "/models/x")).route.path == "/models/{name}"  # type: ignore[union-attr]
    assert not mw._route(scope("GET", "/healthz")).needs_key
    assert not mw._route(scope("GET", "/energy")).full  # wrong method: a path-only match
    assert mw._route(scope("GET", "/nowhere")).route is None
    for i in range(_ROUTE_CACHE_SIZE + 10):  # random paths must not grow it without bound
        mw._route(scope("GET", f"/models/m{i}"))
    assert len(mw._found) <= _ROUTE_CACHE_SIZE


async def test_heap_frozen_once_startup_completes(toy_only: Path) -> None:
    gc.unfreeze()
    app = create_app(Settings(models_dir=toy_only, log_level="WARNING"))
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()
    frozen_at_start: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            frozen_at_start.append(gc.get_freeze_count())
            started.set()

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"},
                                    "state": {}}, inbox.get, send))
    try:
        await asyncio.wait_for(started.wait(), 60)
        assert frozen_at_start[0] > 0  # frozen before the server is told it may serve
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 60)
        gc.unfreeze()


async def test_batcher_deadline_fails_only_the_late_request() -> None:
    def slow(x: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        return x.sum(axis=1)

    with ThreadPoolExecutor(1) as pool:
        b = DynamicBatcher("m", "energy", slow, max_batch_size=8, max_delay_s=0.01,
                           queue_size=8, executor=pool, metrics=Metrics())
        now = asyncio.get_running_loop().time()
        x = np.ones((1, 2), dtype=np.float32)
        t0 = time.perf_counter()
        late = asyncio.create_task(b.submit(x, now + 0.1))  # in the running batch at its deadline
        ok = asyncio.create_task(b.submit(2 * x, now + 5.0))
        with pytest.raises(DeadlineExceeded):
            await late
        late_s = time.perf_counter() - t0
        assert (await ok).tolist() == [4.0]
        await b.close()
    assert 0.08 <= late_s < 0.25, late_s  # at its deadline, not when the batch ended
    assert b._sweep is None or b._sweep_at > now + 1  # the timer moved on to the next one


async def test_generated_request_id_and_log_line_shape(toy_only: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", clean_request_id(None))
    assert clean_request_id("abc-1.2:3") == "abc-1.2:3"
    assert re.fullmatch(r"[0-9a-f]{32}", clean_request_id("bad id\n"))
    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "POST %s %d",
                               ("/energy", 200), None)
    record.status, record.duration_ms, record.model = 200, 1.5, "toy"
    record.error = 2**70  # beyond orjson's integers: the standard encoder takes over
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /energy 200" and line["status"] == 200
    assert line["duration_ms"] == 1.5 and line["error"] == 2**70 and line["level"] == "INFO"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(
            Settings(models_dir=toy_only, log_level="WARNING"))),
            base_url="http://meg.test") as c:
        r = await c.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


@pytest.mark.parametrize("body", [b'{"a": [1.5, -2, 1e-400]}', b'[18446744073709551615]',
                                  b'[18446744073709551616]', b'{"n": 100000000000000000000000}',
                                  b'[1e400]', b'[NaN]', b'"\\ud800"', b'{"a": 1, "a": 2}'])
def test_fast_json_reads_bodies_as_the_standard_parser(body: bytes) -> None:
    fast, std = parse_json(body), json.loads(body)
    assert repr(fast) == repr(std) and type(fast) is type(std)
