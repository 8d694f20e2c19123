"""Admission control: bounded work classes answering 503 + Retry-After when full, queued
work that expires never starting, and cheap calls not waiting behind sampling."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from svc_helpers import serve_app

from service.engine.admission import Admission
from service.engine.errors import DeadlineExceeded, Unavailable
from service.settings import Settings


def _settings(models: Path, **kw: Any) -> Settings:
    return Settings(models_dir=models, log_level="WARNING", inference_workers=2, **kw)


@pytest.mark.anyio
async def test_admission_limits_queue_and_deadline() -> None:
    adm = Admission("render", concurrency=1, queue_size=1)
    loop = asyncio.get_running_loop()
    far = loop.time() + 10
    release = asyncio.Event()
    order: list[str] = []

    async def hold(name: str, deadline: float) -> None:
        async with adm.slot(deadline):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(hold("first", far))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("second", far))
    await asyncio.sleep(0)
    assert adm.running == 1 and adm.waiting == 1
    with pytest.raises(Unavailable) as full:  # one running, one waiting: full
        async with adm.slot(far):
            pass
    assert full.value.code == "queue_full" and full.value.retry_after_s >= 1
    release.set()
    await asyncio.gather(first, second)
    assert order == ["first", "second"] and adm.running == 0

    # A waiter whose deadline passes gives up and never runs; the slot goes on.
    release.clear()
    first = asyncio.create_task(hold("a", far))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded):
        await hold("never", loop.time() + 0.05)
    release.set()
    await first
    assert "never" not in order and adm.running == 0 and adm.waiting == 0
    adm.close()
    with pytest.raises(Unavailable):
        async with adm.slot(far):
            pass


@pytest.mark.anyio
async def test_mcmc_queue_full_is_503_with_retry_after(toy_only: Path) -> None:
    async with serve_app(_settings(toy_only, mcmc_queue_size=2, max_mcmc_steps=10**6)) as (_, c):
        long = {"model": "toy", "n": 2, "seed": 0, "mcmc": {"steps": 10**6}}
        tasks = [asyncio.create_task(c.post("/sample", json=long)) for _ in range(2)]
        await asyncio.sleep(0.3)
        r = await c.post("/sample", json={"model": "toy", "n": 1, "mcmc": {"steps": 5}})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.anyio
async def test_energy_stays_fast_while_sampling_is_saturated(toy_only: Path) -> None:
    async with serve_app(_settings(toy_only, max_mcmc_steps=10**6)) as (app, c):
        heavy = {"model": "toy", "n": 256, "mcmc": {"steps": 300}}
        tasks = [asyncio.create_task(c.post("/sample", json=heavy)) for _ in range(16)]
        await asyncio.sleep(0.3)  # the chain loop is busy now
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            r = await c.post("/energy", json={"model": "toy", "inputs": [[0.0, 0.0]]})
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200
        loop = app.state.engine.chain_loops[("toy", app.state.engine.resolve("toy").version)]
        assert loop.load[0] > 1  # still sampling, requests sharing the batch
        # The sampling work is 16 x 256 chains x 300 steps; one /energy row must not wait
        # for it (before the work classes it waited for all of it).
        assert float(np.median(times)) < 0.25, times
        results = await asyncio.gather(*tasks)
        assert all(r.status_code == 200 for r in results)


@pytest.mark.anyio
async def test_mcmc_over_http_matches_the_model_alone(toy_only: Path) -> None:
    """Concurrent /sample requests share the chain loop; each gets its alone result."""
    async with serve_app(_settings(toy_only)) as (app, c):
        model = app.state.engine.resolve("toy")
        reqs = [{"model": "toy", "n": n, "seed": s, "return_latent": True,
                 "mcmc": {"steps": st, "temperature": t, "adapt": a}}
                for n, s, st, t, a in [(4, 1, 30, 1.0, False), (1, 2, 10, 0.5, True),
                                       (9, 3, 45, 2.0, True)]]
        rs = await asyncio.gather(*(c.post("/sample", json=q) for q in reqs))
        for q, r in zip(reqs, rs, strict=True):
            assert r.status_code == 200, r.text
            m = q["mcmc"]
            z, acc, eps = model.sample_latent_mcmc(q["n"], m["steps"], 0.01, m["temperature"],
                                                   True, m["adapt"], q["seed"])
            np.testing.assert_allclose(r.json()["latent"], z, rtol=1e-4, atol=1e-5)
            assert r.json()["step_size"] == pytest.approx(eps, rel=1e-5)
