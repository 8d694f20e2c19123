"""Helpers shared by the test tree: tiny training settings and a small event table.
(A uniquely named module: pytest imports every conftest.py under the same name.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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
