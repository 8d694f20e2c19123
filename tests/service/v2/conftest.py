"""A real server for the Open Inference Protocol tests: uvicorn in a thread on a free port
(HTTP), with the gRPC front-end on another free port, over the tiny bundles. Started once
per session; the tritonclient libraries talk to it over sockets like any V2 client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from v2_helpers import API_KEY, AUTH, LiveServer, free_port

from service.main import create_app
from service.settings import Settings


@pytest.fixture(scope="session")
def live_server(make_settings: Callable[..., Settings]) -> Iterator[LiveServer]:
    http_port = free_port()
    settings = make_settings(api_keys=API_KEY, grpc_port=free_port())
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=http_port, log_config=None,
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="v2-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as native:
        while True:
            try:
                if native.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert thread.is_alive() and time.monotonic() < deadline, "server never ready"
            time.sleep(0.1)
        grpc_port = app.state.grpc_port
        try:
            yield LiveServer(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", native)
        finally:
            server.should_exit = True
            thread.join(30)

