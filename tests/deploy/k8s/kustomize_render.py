"""Render the kustomizations under deploy/k8s without a cluster or a kustomize binary.

`render(dir)` implements the subset of kustomize the manifests use, nothing more, and
refuses anything else (so a new feature in a kustomization.yaml fails loudly here
instead of being silently ignored):

* ``resources``: YAML files (several documents allowed) and directories holding a
  kustomization (built recursively, as kustomize does);
* ``patches`` with ``path``: strategic-merge patches targeting the object of the same
  kind and name, including ``$patch: delete`` and ``null`` to delete a field; lists
  merge by the same keys Kubernetes uses for the fields patched here;
* ``images``: ``name`` -> ``newName``/``newTag`` on containers and initContainers;
* ``labels`` with ``includeSelectors: false``: added to ``metadata.labels`` only.

Where `kubectl` is installed, test_k8s_manifests.py also checks that `kubectl
kustomize` renders exactly the same objects.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches", "images", "labels"}
# Strategic-merge keys (patchMergeKey in the Kubernetes API) of the lists we patch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _smp(base, patch, key: str | None = None):
    """Strategic merge of `patch` into `base` (both already copied)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        for k, v in patch.items():
            if k == "$patch":
                continue
            if v is None:
                base.pop(k, None)
            elif k in base:
                base[k] = _smp(base[k], v, k)
            else:
                base[k] = _clean(v)
        return base
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        # As kustomize orders the result: the patch's items first, in patch order
        # (merged into their base item when there is one), then the untouched rest.
        mk = MERGE_KEYS[key]
        rest = list(base)
        first = []
        for item in patch:
            idx = next((i for i, b in enumerate(rest) if b.get(mk) == item.get(mk)), None)
            old = rest.pop(idx) if idx is not None else None
            if item.get("$patch") == "delete":
                continue
            first.append(_clean(item) if old is None else _smp(old, item, None))
        return first + rest
    return _clean(patch)


def _clean(v):
    """A patch value as inserted: no directives, no nulls."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items() if k != "$patch" and x is not None}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _pod_spec(obj: dict) -> dict | None:
    spec = obj.get("spec", {})
    if "template" in spec:
        return spec["template"].get("spec")
    if "jobTemplate" in spec:
        return spec["jobTemplate"]["spec"]["template"].get("spec")
    return None


def _set_images(objs: list[dict], images: list[dict]) -> None:
    for obj in objs:
        pod = _pod_spec(obj)
        if not pod:
            continue
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            ref = c.get("image", "")
            name = ref.split("@")[0]
            last = name.rsplit("/", 1)[-1]
            if ":" in last:
                name = name[: name.rfind(":")]
            for img in images:
                if img["name"] == name:
                    unknown = set(img) - {"name", "newName", "newTag"}
                    if unknown:
                        raise ValueError(f"images: unsupported keys {unknown}")
                    c["image"] = img.get("newName", name) + (
                        f":{img['newTag']}" if "newTag" in img else "")


def render(directory: Path) -> list[dict]:
    """The objects `kustomize build directory` produces (for the features above)."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise ValueError(f"{kfile}: kustomize features not supported by this renderer: {unknown}")
    if (k.get("apiVersion"), k.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        raise ValueError(f"{kfile}: not a kustomize.config.k8s.io/v1beta1 Kustomization")

    objs: list[dict] = []
    for res in k.get("resources", []):
        p = (directory / res).resolve()
        objs.extend(render(p) if p.is_dir() else _load_docs(p))

    for patch in k.get("patches", []):
        if set(patch) != {"path"}:
            raise ValueError(f"{kfile}: only `patches: - path: FILE` is supported, got {patch}")
        for doc in _load_docs(directory / patch["path"]):
            kind, name = doc["kind"], doc["metadata"]["name"]
            idx = [i for i, o in enumerate(objs)
                   if o["kind"] == kind and o["metadata"]["name"] == name]
            if len(idx) != 1:
                raise ValueError(f"{patch['path']}: targets {kind}/{name}, found {len(idx)} matches")
            if doc.get("$patch") == "delete":
                objs.pop(idx[0])
            else:
                objs[idx[0]] = _smp(copy.deepcopy(objs[idx[0]]), copy.deepcopy(doc))

    _set_images(objs, k.get("images", []))

    for entry in k.get("labels", []):
        if set(entry) - {"pairs", "includeSelectors"} or entry.get("includeSelectors", False):
            raise ValueError(f"{kfile}: only labels with includeSelectors: false are supported")
        for obj in objs:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    return objs


def by_kind(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


# Every kustomization under deploy/k8s (the `rendered` fixture checks none is missed).
KUSTOMIZATIONS = ["base", "overlays/gpu", "overlays/bundle-from-image", "training"]
