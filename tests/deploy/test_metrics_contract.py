"""The metrics contract between the service and deploy/: every metric and label the
Grafana dashboard and the alert rules use is exposed by the real server's /metrics.

The server is started by the `meg_server` fixture (tests/deploy/conftest.py) on the
tiny bundles of tests/conftest.py, and gets a little traffic of every kind first.
"""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

# name -> (type, label names), as documented in docs/deploy.md and service/metrics.py.
CONTRACT: dict[str, tuple[str, set[str]]] = {
    "meg_requests_total": ("counter", {"endpoint", "model", "status"}),
    "meg_request_duration_seconds": ("histogram", {"endpoint", "model"}),
    "meg_requests_in_flight": ("gauge", set()),
    "meg_grpc_requests_total": ("counter", {"method", "model", "code"}),
    "meg_grpc_request_duration_seconds": ("histogram", {"method", "model"}),
    "meg_batch_size": ("histogram", {"model", "op"}),
    "meg_queue_depth": ("gauge", {"model", "op"}),
    "meg_queue_wait_seconds": ("histogram", {"model", "op"}),
    "meg_inference_duration_seconds": ("histogram", {"model", "op", "backend"}),
    "meg_samples_total": ("counter", {"model", "mcmc"}),
    "meg_mala_acceptance": ("histogram", {"model"}),
    "meg_anomaly_scored_total": ("counter", {"model"}),
    "meg_anomalies_flagged_total": ("counter", {"model"}),
    "meg_model_info": ("gauge", {"model", "version", "provider", "device"}),
    "meg_models_loaded": ("gauge", set()),
}
# gRPC status names, the values of meg_grpc_requests_total's `code`.
GRPC_CODES = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
              "UNAUTHENTICATED"}
# Added by Prometheus at scrape time, or by histograms.
TARGET_LABELS = {"instance", "job"}
# Series Prometheus itself produces, allowed in queries next to the meg_ ones.
PROMETHEUS_SERIES = {"up"}

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                "group_right", "bool", "offset", "inf", "nan", "le"}


def _suffixes(kind: str) -> tuple[str, ...]:
    return {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}.get(
        kind, ("",))


def contract_series() -> dict[str, set[str]]:
    """Every series name the contract implies -> its label names (le for buckets)."""
    out = {}
    for name, (kind, labels) in CONTRACT.items():
        for suffix in _suffixes(kind):
            out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def exposed(text: str) -> dict[str, tuple[str, list[dict[str, str]]]]:
    """Series names on a /metrics page -> (family type, label sets of its samples).
    Families without samples yet (labelled metrics never touched) are listed by the
    names their type implies, with no samples."""
    out: dict[str, tuple[str, list[dict[str, str]]]] = {}
    for fam in text_string_to_metric_families(text):
        base = fam.name + ("_total" if fam.type == "counter" else "")
        for suffix in _suffixes(fam.type):
            out.setdefault(base + suffix, (fam.type, []))
        for s in fam.samples:
            out.setdefault(s.name, (fam.type, []))[1].append(dict(s.labels))
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\{([^}]*)\}")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression reads (not functions, keywords or labels)."""
    e = _STRING.sub('""', expr)
    e = _GROUPING.sub(" ", e)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range/subquery durations
    e = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?[smhdwy]?\b", " ", e)  # numbers, durations
    return {n for n in _IDENT.findall(e) if n not in PROMQL_WORDS}


def grouping_labels(expr: str) -> set[str]:
    e = _STRING.sub('""', expr)
    return {lab.strip() for _, labs in _GROUPING.findall(e) for lab in labs.split(",") if lab.strip()}


def matcher_labels(expr: str) -> list[tuple[str | None, set[str]]]:
    """(series name or None, label names matched) for every selector."""
    e = _STRING.sub('""', expr)
    out = []
    for name, body in _SELECTOR.findall(e):
        labels = {m.group(1) for m in re.finditer(r"([a-zA-Z_]\w*)\s*(=~|!~|!=|=)", body)}
        out.append((name or None, labels))
    return out


def _all_exprs(dashboard_exprs, alerts) -> list[tuple[str, str]]:
    return list(dashboard_exprs) + [(f"alert {r['alert']}", r["expr"]) for r in alerts]


# ------------------------------------------------------- the parser, on known input
def test_promql_name_extraction():
    expr = ('sum by (model) (rate(meg_anomalies_flagged_total{model=~"$m", status="5.."}[10m]))'
            ' / on (model) group_left sum(rate(meg_anomaly_scored_total[6h])) > 3 * 0.1'
            ' and histogram_quantile(0.99, sum by (le) (rate(x_bucket{le!="1"}[5m]))) or up == 0')
    assert metric_names(expr) == {"meg_anomalies_flagged_total", "meg_anomaly_scored_total",
                                  "x_bucket", "up"}
    assert grouping_labels(expr) == {"model", "le"}
    assert matcher_labels(expr) == [("meg_anomalies_flagged_total", {"model", "status"}),
                                    ("x_bucket", {"le"})]


# ------------------------------------------------------------------ the live server
def test_contract_families_are_exposed_with_their_labels(metrics_text):
    series = exposed(metrics_text)
    problems = []
    for name, labels in contract_series().items():
        if name not in series:
            problems.append(f"{name}: missing from /metrics")
            continue
        for sample_labels in series[name][1]:
            if set(sample_labels) != labels:
                problems.append(f"{name}: labels {sorted(sample_labels)} != contract {sorted(labels)}")
                break
    for name, (kind, _) in CONTRACT.items():
        got = series.get(name + _suffixes(kind)[0], (None,))[0]
        if got is not None and got != kind:
            problems.append(f"{name}: type {got}, contract says {kind}")
    assert not problems, "\n".join(problems)


def test_every_metric_in_dashboard_and_alerts_is_exposed(metrics_text, dashboard_exprs, alerts):
    series = exposed(metrics_text)
    missing = []
    for where, expr in _all_exprs(dashboard_exprs, alerts):
        for name in metric_names(expr):
            if name in PROMETHEUS_SERIES:
                continue
            if name not in series:
                missing.append(f"{where}: {name}")
    assert not missing, "used in deploy/ but not on the server's /metrics:\n" + "\n".join(missing)


def test_every_label_in_dashboard_and_alerts_exists(dashboard_exprs, alerts, dashboard):
    contract = contract_series()
    known = set().union(*contract.values()) | TARGET_LABELS | {"le"}
    problems = []
    for where, expr in _all_exprs(dashboard_exprs, alerts):
        problems += [f"{where}: by/on ({lab})" for lab in grouping_labels(expr) - known]
        for name, labels in matcher_labels(expr):
            allowed = contract.get(name, set()) | TARGET_LABELS if name in contract else known
            problems += [f"{where}: {name}{{{lab}}}" for lab in labels - allowed]
    for rule in alerts:
        for text in rule.get("annotations", {}).values():
            problems += [f"alert {rule['alert']}: $labels.{lab}"
                         for lab in set(re.findall(r"\$labels\.(\w+)", text)) - known]
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            problems += [f"panel {panel['title']}: legend {{{{{lab}}}}}"
                         for lab in set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
                         - known]
    assert not problems, "\n".join(problems)


def test_label_values_follow_the_contract(meg_server, metrics_text):
    if not meg_server.has_models:
        pytest.skip("no tiny_bundle_dir fixture: server ran without models")
    series = exposed(metrics_text)
    names = {m["name"] for m in meg_server.models}
    for s in series["meg_requests_total"][1]:
        assert re.fullmatch(r"[1-5]\d\d", s["status"]), s
    for s in series["meg_inference_duration_seconds_count"][1]:
        assert s["backend"] in {"onnxruntime", "torch", "numpy"}, s  # numpy: knn scores
    for s in series["meg_samples_total"][1]:
        assert s["mcmc"] in {"true", "false"}, s
    info = series["meg_model_info"][1]
    assert {s["model"] for s in info} == names
    assert all(s["device"] == "cpu" for s in info)
    # gRPC: method is the RPC's name, code its status name, model a served one (or
    # empty for the server-level RPCs and a model that does not exist).
    grpc_calls = series["meg_grpc_requests_total"][1]
    assert {s["method"] for s in grpc_calls} == set(meg_server.grpc_traffic)
    assert {s["code"] for s in grpc_calls} == {c for codes in meg_server.grpc_traffic.values()
                                               for c in codes}
    assert all(s["code"] in GRPC_CODES for s in grpc_calls), grpc_calls
    assert {s["model"] for s in grpc_calls if s["method"] == "ModelInfer" and s["code"] == "OK"
            } == names


def test_traffic_fills_every_labelled_metric(meg_server, metrics_text):
    """With bundles loaded, the traffic of `meg_server` reaches every code path the
    dashboard shows: each contract series has samples (not only HELP/TYPE lines)."""
    if not meg_server.has_models:
        pytest.skip("no tiny_bundle_dir fixture: server ran without models")
    ok = {path: [s for s in statuses if s == 200] for path, statuses in meg_server.traffic.items()}
    assert ok.get("/sample") and ok.get("/energy") and ok.get("/anomaly"), meg_server.traffic
    assert "OK" in meg_server.grpc_traffic.get("ModelInfer", []), meg_server.grpc_traffic
    series = exposed(metrics_text)
    empty = [name for name in contract_series() if not series.get(name, ("", []))[1]]
    assert not empty, f"no samples after traffic: {empty}\ntraffic: {meg_server.traffic}"
