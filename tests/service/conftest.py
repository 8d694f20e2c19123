"""Fixtures for the model-server tests.

`client`: one app over the three tiny bundles, shared by the whole session (loading and
warming up bundles is the slow part), driven by FastAPI's TestClient so the lifespan runs.
Tests that need their own app and settings use svc_helpers.serve_app.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from svc_helpers import LIMITS

from service.main import create_app
from service.settings import Settings


@pytest.fixture(scope="session")
def models_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir


@pytest.fixture(scope="session")
def make_settings(models_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {"models_dir": models_dir, "log_level": "WARNING",
                                "inference_workers": 2, **LIMITS}
        return Settings(**{**base, **overrides})

    return make


@pytest.fixture(scope="session")
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    app = create_app(make_settings())
    with TestClient(app) as c:
        yield c


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def toy_only(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding just the `toy` bundle (the quickest to load)."""
    root = tmp_path_factory.mktemp("toy-only")
    shutil.copytree(models_dir / "toy", root / "toy")
    return root
