"""deploy/prometheus: the config and rules load in Prometheus' own checker, every alert
rule has a unit test showing it fire (promtool test rules), and the scrape config finds
every `meg` replica."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

PROM = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
REQUIRED_ALERTS = {"HighErrorRatio", "HighP99Latency", "QueueSaturation",
                   "MalaAcceptanceCollapse", "AnomalyRateSpike", "TargetDown", "MegNoModelLoaded"}


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"promtool {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def test_promtool_check_config(promtool):
    # Also loads and checks the rule files the config names.
    promtool_run(promtool, "check", "config", "prometheus.yml")


def test_promtool_check_rules(promtool):
    promtool_run(promtool, "check", "rules", "alerts.yml")


def test_promtool_test_rules(promtool):
    out = promtool_run(promtool, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out.stdout


def test_alerts_are_complete_and_labelled(alerts):
    names = [r["alert"] for r in alerts if "alert" in r]
    assert set(names) == REQUIRED_ALERTS, names
    assert len(names) == len(set(names))
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert "for" in rule, f"{rule['alert']}: no `for:`, it would fire on one bad evaluation"
    (target_down,) = [r for r in alerts if r["alert"] == "TargetDown"]
    assert target_down["expr"].strip() == 'up{job="meg"} == 0'


def test_every_alert_is_unit_tested_firing_and_not_firing():
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    firing, quiet = set(), set()
    for group in doc["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == REQUIRED_ALERTS, f"alerts never shown firing: {REQUIRED_ALERTS - firing}"
    assert quiet, "no test shows an alert staying quiet"


def test_scrape_config_discovers_every_replica():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "meg"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # All replicas via Docker DNS (one A record per container), not the load balancer.
    assert job["dns_sd_configs"] == [
        {"names": ["meg"], "type": "A", "port": 8000, "refresh_interval": "15s"}]
    assert "static_configs" not in job
