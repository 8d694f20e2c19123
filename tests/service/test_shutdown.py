"""Shutdown that loses nothing: SIGTERM to a real `meg serve` with MCMC requests in flight
lets every one of them finish (200) or answers it with a JSON 503, and exits 0."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from svc_helpers import wait_ready

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_graceful_timeout_covers_the_request_timeout() -> None:
    assert Settings(_env_file=None, request_timeout_s=30).grace_s == 35.0
    assert Settings(_env_file=None, request_timeout_s=12, graceful_timeout_s=12).grace_s == 12
    with pytest.raises(ValidationError, match="graceful_timeout_s"):
        Settings(_env_file=None, request_timeout_s=30, graceful_timeout_s=20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meg_serve(models: Path, port: int, **env: str) -> subprocess.Popen[str]:
    full_env = {**os.environ, "MEG_MODELS_DIR": str(models), "MEG_LOG_LEVEL": "WARNING",
                "MEG_INFERENCE_WORKERS": "2", **env}
    return subprocess.Popen([sys.executable, "-m", "meg.cli", "serve", "--port", str(port)],
                            cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigterm_with_mcmc_requests_in_flight_loses_nothing(toy_only: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _meg_serve(toy_only, port, MEG_REQUEST_TIMEOUT_S="10", MEG_MAX_MCMC_STEPS="100000")
    try:
        wait_ready(proc, base)
        body = {"model": "toy", "n": 16, "mcmc": {"steps": 1500}}

        def one(i: int) -> tuple[int, str, float, float]:
            with httpx.Client(timeout=30) as c:
                t0 = time.monotonic()
                r = c.post(f"{base}/sample", json={**body, "seed": i})
                return r.status_code, r.headers.get("content-type", ""), t0, time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(one, i) for i in range(32)]
            time.sleep(1.0)  # every request sent, the chain loop is busy
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    statuses = [s for s, *_ in results]
    assert all(s in (200, 503) for s in statuses), (statuses, out)
    assert all(ct.startswith("application/json") for _, ct, *_ in results), results
    started_before = [r for r in results if r[2] < t_term]
    finished_after = [r for r in started_before if r[3] > t_term and r[0] == 200]
    assert finished_after, "no request was in flight at SIGTERM: the test proves nothing"
    assert all(r[0] == 200 for r in started_before), statuses  # in flight: finished
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "timeout graceful shutdown exceeded" not in out, out


def test_busy_port_is_reported_before_loading_models(toy_only: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # A models dir that would take long to load if it were loaded: a port check that
        # came after loading would show up as a slow exit (and a different message).
        t0 = time.monotonic()
        proc = _meg_serve(toy_only, port, MEG_LOG_LEVEL="INFO")
        out, _ = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 2, out
    assert f"cannot listen on 127.0.0.1:{port}" in out and "already in use" in out, out
    assert "loading bundles" not in out and "Traceback" not in out, out
    assert elapsed < 20
