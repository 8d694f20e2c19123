"""Fixtures for the Kubernetes manifest checks: the rendered kustomizations."""

from __future__ import annotations

import pytest
from kustomize_render import K8S, KUSTOMIZATIONS, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Rendered objects of every kustomization under deploy/k8s, by relative path."""
    found = sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))
    assert found == sorted(KUSTOMIZATIONS), f"update KUSTOMIZATIONS in {__file__}: {found}"
    return {name: render(K8S / name) for name in KUSTOMIZATIONS}
