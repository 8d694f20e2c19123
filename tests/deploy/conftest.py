"""Fixtures for the deployment checks (tests/deploy).

Tools come from `bash deploy/install-tools.sh` (promtool, prometheus, nginx, docker
compose); a test needing a missing one skips and says which and how to get it.

`meg_server` starts the real model server (`uvicorn service.main:app`) once per
session, on loopback, on the bundles of the `tiny_bundle_dir` fixture from
tests/conftest.py, with its gRPC front-end on, and sends it a little traffic of every
kind (HTTP and gRPC), so that /metrics has children for every labelled metric.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import (
    INSTALL_HINT,
    REPO,
    MegServer,
    alert_rules,
    dashboard_queries,
    find_tool,
    free_port,
    http,
    load_dashboard,
    model_list,
    send_grpc_traffic,
    send_traffic,
    stop,
    wait_until,
)


# -------------------------------------------------------------------- tool paths
def _require_tool(name: str, what: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{what} not installed; {INSTALL_HINT}")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _require_tool("promtool", "promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _require_tool("prometheus", "prometheus server binary")


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    return _require_tool("nginx", "nginx")


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    """The Docker Compose v2 CLI (`docker compose` plugin or `docker-compose` v2).
    Only `config` is used, which needs no Docker daemon."""
    candidates = []
    if find_tool("docker"):
        candidates.append([find_tool("docker"), "compose"])
    if find_tool("docker-compose"):
        candidates.append([find_tool("docker-compose")])
    for cmd in candidates:
        try:
            out = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and " v2." in out.stdout:
            return cmd
    pytest.skip(f"Docker Compose v2 not installed; {INSTALL_HINT}")


@pytest.fixture(scope="session")
def meg_server(request, tmp_path_factory) -> Iterator[MegServer]:
    """The real service on 127.0.0.1:<free port>, with MEG_MODELS_DIR set to the
    `tiny_bundle_dir` fixture of tests/conftest.py. Without that fixture it starts on
    an empty models directory (the server then answers /readyz 503 and still exposes
    every metric family), and tests needing loaded models skip."""
    try:
        models_dir = Path(request.getfixturevalue("tiny_bundle_dir"))
    except pytest.FixtureLookupError:
        models_dir = tmp_path_factory.mktemp("empty-models")

    port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("meg-server") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEG_")}
    env.update({
        "MEG_MODELS_DIR": str(models_dir),
        "MEG_DEVICE": "cpu",
        # No auth, whatever a local .env file says (set variables win over .env).
        "MEG_API_KEYS": "",
        # Small thread pools: the test machine has 2 cores shared with other work.
        "MEG_ORT_THREADS": "1",
        "MEG_TORCH_THREADS": "1",
        "MEG_POLL_INTERVAL_S": "0.5",
        # The Open Inference Protocol over gRPC, as docker-compose.yml and k8s run it.
        "MEG_GRPC_PORT": str(grpc_port),
        "PYTHONUNBUFFERED": "1",
    })
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = MegServer(url=f"http://127.0.0.1:{port}", models_dir=models_dir, log=log, proc=proc,
                       grpc_target=f"127.0.0.1:{grpc_port}")
    try:
        wait_until(lambda: http("GET", server.url + "/healthz", timeout=2)[0] == 200,
                   timeout=60, proc=proc, what="GET /healthz == 200", log=log)
        bundles = [p for p in models_dir.iterdir() if p.is_dir()] if models_dir.is_dir() else []
        if bundles:
            wait_until(lambda: http("GET", server.url + "/readyz", timeout=2)[0] == 200,
                       timeout=90, proc=proc, what="GET /readyz == 200", log=log)
            status, body = http("GET", server.url + "/models")
            assert status == 200, body
            server.models = model_list(json.loads(body))
            assert server.models, f"GET /models listed no model: {body[:500]!r}"
        server.traffic = send_traffic(server)
        server.grpc_traffic = send_grpc_traffic(server.grpc_target, server.models)
        yield server
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def metrics_text(meg_server: MegServer) -> str:
    """The /metrics page after the traffic of `meg_server`."""
    status, body = http("GET", meg_server.url + "/metrics")
    assert status == 200, body[:500]
    return body.decode()


@pytest.fixture(scope="session")
def dashboard() -> dict:
    return load_dashboard()


@pytest.fixture(scope="session")
def dashboard_exprs() -> list[tuple[str, str]]:
    return dashboard_queries()


@pytest.fixture(scope="session")
def alerts() -> list[dict]:
    return alert_rules()
