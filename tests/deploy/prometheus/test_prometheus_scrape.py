"""Integration: a real Prometheus server scrapes the real model server.

Both run on loopback only, on free ports, with a 1 s scrape interval and the alert
rules of deploy/prometheus/alerts.yml loaded. Checks that the series arrive, that the
rules evaluate without errors against real series, and that every dashboard query is
accepted by Prometheus. Bounded: ~30 s at most for data to appear.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from collections.abc import Iterator

import pytest
import yaml
from deploy_support import DEPLOY, free_port, http, stop, wait_until


def _query(base: str, promql: str) -> dict:
    status, body = http("GET", f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    payload = json.loads(body)
    assert status == 200 and payload["status"] == "success", f"{promql}: {status} {payload}"
    return payload["data"]


@pytest.fixture(scope="module")
def prometheus(prometheus_bin, meg_server, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("prometheus")
    target = meg_server.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": "meg", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", base + "/-/ready", timeout=2)[0] == 200, timeout=30,
                   proc=proc, what="prometheus /-/ready", log=log)
        yield base
    finally:
        stop(proc)


def test_prometheus_scrapes_the_service(prometheus, meg_server):
    data = wait_until(lambda: _query(prometheus, "meg_requests_total")["result"], timeout=30,
                      interval=0.5, what="meg_requests_total in Prometheus")
    assert {r["metric"]["job"] for r in data} == {"meg"}
    (up,) = _query(prometheus, 'up{job="meg"}')["result"]
    assert up["value"][1] == "1"
    # Info gauge made it through with its labels (a model per loaded bundle).
    if meg_server.has_models:
        info = _query(prometheus, "meg_model_info")["result"]
        assert {r["metric"]["model"] for r in info} == {m["name"] for m in meg_server.models}
    (loaded,) = _query(prometheus, 'meg_models_loaded{job="meg"}')["result"]
    assert loaded["value"][1] == str(len(meg_server.models) if meg_server.has_models else 0)


def test_alert_rules_evaluate_cleanly_on_real_series(prometheus, alerts):
    def evaluated():
        status, body = http("GET", prometheus + "/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        done = all(not r.get("lastEvaluation", "").startswith("0001-") for r in rules)
        return rules if rules and done else None

    rules = wait_until(evaluated, timeout=30, interval=0.5, what="rules evaluated")
    assert sorted(r["name"] for r in rules) == sorted(a["alert"] for a in alerts)
    bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_every_dashboard_query_runs(prometheus, dashboard_exprs):
    # Give rate() two samples to work with, then run every panel query.
    time.sleep(2)
    for title, expr in dashboard_exprs:
        try:
            _query(prometheus, expr)
        except AssertionError as e:
            raise AssertionError(f"panel {title!r}: {e}") from None

