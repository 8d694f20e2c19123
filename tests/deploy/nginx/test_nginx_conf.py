"""deploy/nginx/nginx.conf: accepted by `nginx -t`, balances HTTP and gRPC over every
`meg` replica through Docker's DNS at request time (so `--scale meg=N` works), and
really proxies both to a live server (the config run with loopback addresses)."""

from __future__ import annotations

import re
import subprocess

import pytest
from deploy_support import DEPLOY, free_port, http, stop, wait_until

CONF = DEPLOY / "nginx" / "nginx.conf"


def test_nginx_accepts_the_config(nginx_bin, tmp_path):
    (tmp_path / "logs").mkdir()
    out = subprocess.run([nginx_bin, "-t", "-p", str(tmp_path), "-c", str(CONF)],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0 and "Permission denied" in out.stderr:
        pytest.skip(f"nginx -t needs root for its temp paths here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr


def test_round_robin_over_docker_dns():
    text = re.sub(r"#.*", "", CONF.read_text())
    assert re.search(r"resolver\s+127\.0\.0\.11\b", text)
    assert re.search(r"listen\s+8000;", text)
    # A variable in proxy_pass is what makes nginx re-resolve `meg` (all replicas).
    var = re.search(r"set\s+\$(\w+)\s+http://meg:8000;", text)
    assert var and re.search(rf"proxy_pass\s+\${var.group(1)};", text)
    assert not re.search(r"\bupstream\s+\S+\s*\{", text), \
        "an upstream {} block resolves `meg` only once, at start-up"


def test_grpc_round_robin_over_docker_dns():
    """gRPC (HTTP/2 without TLS) on 8001, to every replica's gRPC port, re-resolved per
    call like HTTP."""
    text = re.sub(r"#.*", "", CONF.read_text())
    assert re.search(r"listen\s+8001\s+http2;", text)
    var = re.search(r"set\s+\$(\w+)\s+grpc://meg:8001;", text)
    assert var and re.search(rf"grpc_pass\s+\${var.group(1)};", text)
    assert re.search(r"grpc_next_upstream\s[^;]*\berror\b", text)


def _local_conf(tmp, lb_http: int, lb_grpc: int, meg_http: str, meg_grpc: str) -> str:
    """nginx.conf with loopback addresses for Docker's: each edited line must be there
    exactly once, so the test runs the committed config, not a lookalike."""
    text = CONF.read_text()
    edits = {
        "worker_processes auto;": "worker_processes 1;",
        "pid /tmp/nginx.pid;": f"pid {tmp}/nginx.pid;",
        "listen 8000;": f"listen 127.0.0.1:{lb_http};",
        "listen 8001 http2;": f"listen 127.0.0.1:{lb_grpc} http2;",
        "http://meg:8000;": f"http://{meg_http};",
        "grpc://meg:8001;": f"grpc://{meg_grpc};",
        # Temp paths of our own, so nginx also runs without root.
        "http {": "http {\n" + "".join(f"    {kind}_temp_path {tmp}/{kind};\n" for kind in
                                        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
    }
    for old, new in edits.items():
        assert text.count(old) == 1, f"{old!r} not once in {CONF}"
        text = text.replace(old, new)
    return text


def test_nginx_proxies_http_and_grpc_to_the_server(nginx_bin, meg_server, tmp_path):
    """The committed config, with loopback addresses, in front of the real server:
    HTTP answers as before, and Triton's gRPC client gets the same numbers through
    `lb` as from the replica directly."""
    np = pytest.importorskip("numpy")
    tg = pytest.importorskip("tritonclient.grpc")
    if not meg_server.has_models:
        pytest.skip("no tiny_bundle_dir fixture: server ran without models")
    lb_http, lb_grpc = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(_local_conf(tmp_path, lb_http, lb_grpc,
                                meg_server.url.removeprefix("http://"), meg_server.grpc_target))
    (tmp_path / "logs").mkdir()
    log = tmp_path / "nginx.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([nginx_bin, "-p", str(tmp_path), "-c", str(conf),
                                 "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT)
    lb = f"http://127.0.0.1:{lb_http}"
    try:
        wait_until(lambda: http("GET", lb + "/lb-healthz", timeout=2)[0] == 200, timeout=15,
                   proc=proc, what="nginx /lb-healthz", log=log)
        assert http("GET", lb + "/readyz")[0] == 200

        model = meg_server.models[0]
        dim = int(model.get("data_dim") or 2)
        x = np.linspace(-1, 1, 4 * dim, dtype=np.float32).reshape(4, dim)

        def energies(target: str):
            client = tg.InferenceServerClient(target)
            try:
                assert client.is_server_live()
                assert client.is_model_ready(f"{model['name']}.energy")
                inp = tg.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                return client.infer(f"{model['name']}.energy", [inp]).as_numpy("energy")
            finally:
                client.close()

        through_lb = energies(f"127.0.0.1:{lb_grpc}")
        assert through_lb.shape == (4,)
        np.testing.assert_array_equal(through_lb, energies(meg_server.grpc_target))
    finally:
        stop(proc)
