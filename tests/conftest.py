"""Shared fixtures: tiny trained bundles (a few steps, small nets) that the service and
deploy tests load, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from megtest import make_table, train_tiny

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "MEG_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["MEG_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A models directory with three tiny bundles: `toy` (2-D points), `events`
    (tabular records with preprocessing) and `digits` (8x8 images)."""
    root = tmp_path_factory.mktemp("meg")
    models = root / "models"
    csv = root / "events.csv"
    make_table().to_csv(csv, index=False)
    train_tiny("25gaussians", models / "toy", ["data.n=2000"])
    train_tiny("tabular", models / "events",
               [f"data.path={str(csv)!r}", "data.label='label'", "data.normal_values=['normal']"])
    train_tiny("digits", models / "digits")
    return models


@pytest.fixture(scope="session")
def tiny_bundle_dir(tiny_models_dir) -> Path:
    """A models directory (see tiny_models_dir) for tests that start a real server."""
    return tiny_models_dir
