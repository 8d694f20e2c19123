"""deploy/grafana: provisioning wires the dashboard to the Prometheus datasource, the
dashboard covers what operators need, and every query is valid PromQL (checked by
promtool, as recording rules, with Grafana's variables substituted)."""

from __future__ import annotations

import subprocess

import yaml
from deploy_support import DEPLOY

GRAFANA = DEPLOY / "grafana"


def _panels(panels):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _datasource_uid() -> str:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    return ds["uid"]


def test_provisioning_files():
    assert _datasource_uid()
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "meg.yml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


def test_dashboard_structure(dashboard):
    uid = _datasource_uid()
    assert dashboard["uid"] and dashboard["title"]
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == uid, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid and t["expr"].strip(), p["title"]
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == uid


def test_panels_do_not_overlap(dashboard):
    """No two top-level panels (rows included: each takes a grid line) share a cell."""
    taken: dict[tuple[int, int], str] = {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = p["title"]


def test_dashboard_covers_the_service(dashboard):
    """Request rate, error ratio, latency quantiles per endpoint, batching, queueing,
    inference per backend, MALA acceptance, anomaly rate, model info, and the gRPC
    front-end's call rate and latency."""
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    text = "\n".join(exprs)

    def has(*needles: str) -> bool:
        return any(all(n in e for n in needles) for e in exprs)

    assert has("rate(meg_requests_total")
    assert has('status=~"5.."', "meg_requests_total")
    for q in ("0.5", "0.95", "0.99"):
        assert has(f"histogram_quantile({q}", "endpoint", "meg_request_duration_seconds_bucket")
    assert has("meg_batch_size_sum") and has("meg_queue_depth") and has("meg_queue_wait_seconds_bucket")
    assert has("backend", "meg_inference_duration_seconds_bucket")
    assert has("meg_mala_acceptance_sum", "meg_mala_acceptance_count")
    assert has("meg_anomalies_flagged_total", "meg_anomaly_scored_total")
    assert "meg_model_info" in text and "meg_requests_in_flight" in text
    assert has("meg_models_loaded", "== 0")
    # The gRPC front-end (MEG_GRPC_PORT): calls by RPC and status code, p99 per RPC.
    assert has("rate(meg_grpc_requests_total", "by (method, code)")
    assert has("histogram_quantile(0.99", "method", "meg_grpc_request_duration_seconds_bucket")


def test_every_query_is_valid_promql(promtool, dashboard_exprs, tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)
    titles = "\n".join(f"dashboard:query{i} = {t}" for i, (t, _) in enumerate(dashboard_exprs))
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{titles}"
