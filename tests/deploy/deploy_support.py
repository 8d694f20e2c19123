"""Helpers for the deployment checks in tests/deploy (imported by conftest.py and by
test modules; plain functions, no fixtures)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALL_HINT = "run `bash deploy/install-tools.sh` as root (the Makefile's `make test` does)"


# ----------------------------------------------------------------------- helpers
def find_tool(name: str) -> str | None:
    """`name` on PATH, or in the sbin directories a non-root PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: object | None = None, timeout: float = 10.0
         ) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are answers, not exceptions."""
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(check, timeout: float, interval: float = 0.25, proc: subprocess.Popen | None = None,
               what: str = "condition", log: Path | None = None):
    """Poll `check()` until it returns a truthy value; fail (with the process log) if
    `proc` exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            result = check()
            if result:
                return result
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached within {timeout:.0f}s\n{tail(log)}")
        time.sleep(interval)


def tail(log: Path | None, n: int = 60) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()
    return "--- last lines of " + str(log) + " ---\n" + "\n".join(lines[-n:])


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL: only the process this test session started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


# ----------------------------------------------------------------------- the server
@dataclass
class MegServer:
    url: str
    models_dir: Path
    log: Path
    proc: subprocess.Popen
    # Model summaries from GET /models; empty when started without bundles.
    models: list[dict] = field(default_factory=list)
    traffic: dict[str, list[int]] = field(default_factory=dict)
    # host:port of the Open Inference Protocol gRPC front-end (MEG_GRPC_PORT).
    grpc_target: str = ""
    # gRPC status names per RPC, from send_grpc_traffic.
    grpc_traffic: dict[str, list[str]] = field(default_factory=dict)

    @property
    def has_models(self) -> bool:
        return bool(self.models)


def model_list(payload: dict) -> list[dict]:
    """The model summaries of a GET /models answer (service/schemas.py: ModelList)."""
    return [m for m in payload.get("models", []) if m.get("status", "ready") == "ready"]


def _rows(model: dict, n: int) -> list[list[float]]:
    dim = int(model.get("data_dim") or 2)
    return [[0.1 * ((i + j) % 7) for j in range(dim)] for i in range(n)]


def send_traffic(server: MegServer, rounds: int = 2) -> dict[str, list[int]]:
    """A few requests of every kind against every loaded model (bodies as in
    service/schemas.py): plain and MCMC sampling, energies, anomaly scoring with and
    without explanations, encoding, a PNG, the model endpoints, and a request for an
    unknown model (a 4xx). Returns the statuses per endpoint."""
    seen: dict[str, list[int]] = {}

    def call(method: str, path: str, body: object | None = None) -> int:
        status, _ = http(method, server.url + path, body, timeout=60)
        seen.setdefault(path.split("?")[0], []).append(status)
        return status

    call("GET", "/models")
    for r in range(rounds):
        for m in server.models:
            name = m["name"]
            call("GET", f"/models/{name}")
            call("POST", "/sample", {"model": name, "n": 4, "seed": r})
            call("POST", "/sample", {"model": name, "n": 4, "seed": r, "mcmc": {"steps": 3}})
            call("POST", "/energy", {"model": name, "inputs": _rows(m, 5)})
            call("POST", "/anomaly", {"model": name, "inputs": _rows(m, 5), "explain": r == 0})
            call("POST", "/encode", {"model": name, "inputs": _rows(m, 3)})
        if server.models:
            call("GET", f"/sample.png?model={server.models[0]['name']}&n=4&seed={r}")
    call("POST", "/energy", {"model": "no-such-model", "inputs": [[0.0, 0.0]]})
    return seen


def send_grpc_traffic(target: str, models: list[dict]) -> dict[str, list[str]]:
    """A few Open Inference Protocol calls over gRPC (tritonclient.grpc, as a Triton
    client would make them) against `target` (host:port): the server probes and
    metadata, and per model its `NAME.energy` readiness, metadata and an inference; then
    an inference on an unknown model (NOT_FOUND). Returns the status names per RPC."""
    import numpy as np
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    seen: dict[str, list[str]] = {}

    def call(method: str, fn, *args: object) -> object:
        try:
            result, code = fn(*args), "OK"
        except InferenceServerException as e:
            result, code = None, str(e.status()).removeprefix("StatusCode.")
        seen.setdefault(method, []).append(code)
        return result

    def x_input(rows: list[list[float]]) -> object:
        x = np.asarray(rows, dtype=np.float32)
        t = tg.InferInput("x", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        return t

    client = tg.InferenceServerClient(target)
    try:
        call("ServerLive", client.is_server_live)
        call("ServerReady", client.is_server_ready)
        call("ServerMetadata", client.get_server_metadata)
        for m in models:
            name = f"{m['name']}.energy"
            call("ModelReady", client.is_model_ready, name)
            call("ModelMetadata", client.get_model_metadata, name)
            call("ModelInfer", client.infer, name, [x_input(_rows(m, 5))])
        call("ModelInfer", client.infer, "no-such-model", [x_input([[0.0, 0.0]])])
    finally:
        client.close()
    return seen


# ------------------------------------------------------------ PromQL in the configs
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$model": ".*", "$instance": ".*"}


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with its Grafana variables replaced by plain PromQL values."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def _panels(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def load_dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "meg.json").read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard, variables substituted,
    template-variable queries included."""
    dash = load_dashboard()
    out = [(p["title"], grafana_to_promql(t["expr"]))
           for p in _panels(dash["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
        if m:  # label_values(SELECTOR, label): the selector is the PromQL part
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]
