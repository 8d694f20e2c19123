"""Helpers shared by the service tests (imported as a plain module)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI

from service.main import create_app
from service.settings import Settings

# Limits small enough to hit cheaply in the bad-input tests (the shared `client` app).
LIMITS: dict[str, Any] = {"max_rows": 100, "max_samples": 500, "max_mcmc_steps": 50,
                          "max_body_bytes": 256 * 1024}

@contextlib.asynccontextmanager
async def serve_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app with its lifespan running, and an AsyncClient talking to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meg.test",
                                     timeout=30) as c:
            yield app, c


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0.0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += float(s.value)
    return total


def wait_ready(proc: subprocess.Popen[str], base: str, timeout: float = 60.0) -> None:
    """Poll a server process's /readyz until 200; fail with its output if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.1)
