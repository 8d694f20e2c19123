"""deploy/nginx/nginx.conf: accepted by `nginx -t`, and balances over every `meg`
replica through Docker's DNS at request time (so `--scale meg=N` works)."""

from __future__ import annotations

import re
import subprocess

import pytest
from deploy_support import DEPLOY

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
