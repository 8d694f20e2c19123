"""Shared fixtures: tiny trained bundles (a few steps, small nets) that the service and
deploy tests load, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "MEG_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["MEG_DATA_DIR"] = str(SHARED_DATA)

TINY = [
    "model.g_hidden=[32, 32]", "model.e_hidden=[32, 32]", "model.enc_hidden=[32]",
    "model.t_hidden=[32, 32]", "train.steps=20", "train.log_every=10", "train.preview_every=0",
    "train.checkpoint_every=0", "train.batch_size=64", "train.n_critic=1",
]


def train_tiny(recipe: str, out: Path, extra: list[str] | None = None) -> Path:
    """Train `recipe` for a few steps with small nets and export a bundle to `out`."""
    from training.config import apply_overrides, load_recipe
    from training.train import train

    cfg = apply_overrides(load_recipe(recipe), TINY + (extra or []))
    train(cfg, out, out.parent.parent / "runs" / out.name, progress=False)
    return out


def make_table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A small event table: two numeric columns, one categorical, a label."""
    rng = np.random.default_rng(seed)
    anomalous = rng.random(n) < 0.1
    return pd.DataFrame({
        "bytes": np.where(anomalous, rng.normal(900, 50, n), rng.normal(100, 10, n)).round(2),
        "duration": rng.exponential(2.0, n).round(3),
        "protocol": rng.choice(["tcp", "udp", "icmp"], n),
        "label": np.where(anomalous, "attack", "normal"),
    })


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
