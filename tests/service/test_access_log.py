"""The access log: the same JSON line as the logging path writes, buffered and flushed
from the event loop with the default configuration, ordinary records otherwise."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.logs import AccessLog, JsonFormatter, request_id_var, setup_logging
from service.main import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    setup_logging("INFO")
    yield buf
    monkeypatch.undo()
    setup_logging("WARNING")  # a handler on the real stderr again


def _only_service_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest adds its capture handlers beside the service's for each test phase: keep
    just the service's, as in a real server."""
    service = logging.getLogger("service")
    monkeypatch.setattr(service, "handlers",
                        [h for h in service.handlers if getattr(h, "_meg", False)])


def _lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(s) for s in buf.getvalue().splitlines() if s.strip()]


async def test_buffered_line_equals_the_logging_paths(stream: io.StringIO,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _only_service_handler(monkeypatch)
    access = AccessLog("service.access", flush_s=0.05)
    token = request_id_var.set("rid-1")
    try:
        access.write(logging.INFO, "POST /energy 200", method="POST", path="/energy",
                     status=200, duration_ms=1.25, model="toy")
        assert stream.getvalue() == ""  # buffered
        record = logging.LogRecord("service.access", logging.INFO, __file__, 1,
                                   "POST /energy 200", None, None)
        for k, v in dict(method="POST", path="/energy", status=200, duration_ms=1.25,
                         model="toy").items():
            setattr(record, k, v)
        expected = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    await asyncio.sleep(0.15)  # the timer flushes
    (line,) = _lines(stream)
    assert list(line) == list(expected)  # same fields, same order
    assert {k: v for k, v in line.items() if k != "time"} == \
        {k: v for k, v in expected.items() if k != "time"}


async def test_added_handler_gets_ordinary_records(stream: io.StringIO) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    access = AccessLog("service.access")
    h = Keep()
    logging.getLogger("service.access").addHandler(h)
    try:
        access.write(logging.INFO, "GET /models 200", method="GET", path="/models",
                     status=200, duration_ms=0.5, model="")
    finally:
        logging.getLogger("service.access").removeHandler(h)
    assert [r.getMessage() for r in seen] == ["GET /models 200"]
    assert seen[0].__dict__["status"] == 200
    assert _lines(stream)[0]["path"] == "/models"  # and it still reaches stderr


async def test_every_request_is_logged_by_shutdown(toy_only: Path, stream: io.StringIO,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(Settings(models_dir=toy_only, log_level="INFO"))
    async with app.router.lifespan_context(app):  # sets up logging; flushes at exit
        _only_service_handler(monkeypatch)
        for h in logging.getLogger("service").handlers:
            h.setStream(stream)  # type: ignore[attr-defined]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://meg.test") as c:
            rids = [(await c.post("/energy", json={"model": "toy", "inputs": [[0.0, 1.0]]}))
                    .headers["x-request-id"] for _ in range(5)]
    access = [x for x in _lines(stream) if x.get("logger") == "service.access"]
    assert [x["request_id"] for x in access] == rids
    assert all(x["status"] == 200 and x["path"] == "/energy" and x["model"] == "toy"
               for x in access)
