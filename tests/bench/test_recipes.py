"""bench/recipes.py's docs section marks figures that an older recipe produced."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
recipes = pytest.importorskip("recipes")

INFO = {"cpu": "CPU", "cpu_count": 2, "python": "3", "torch": "2", "onnxruntime": "1", "date": "today"}


def _run(recipe: str, steps: int) -> dict:
    return {"recipe": recipe, "seed": 0, "wall_seconds": 1.0, "steps": steps,
            "metrics": {"modes_covered": 25, "high_quality_fraction": 0.9}, "command": f"meg train {recipe} --seed 0"}


def test_a_row_from_an_older_step_count_is_marked_and_explained() -> None:
    runs = [_run("25gaussians", 4500), _run("kddcup99", 1500)]
    md = recipes.section(INFO, runs, "--only 25gaussians,kddcup99 --seeds 0",
                         {"25gaussians": 13500, "kddcup99": 1500})
    (toy,) = [line for line in md.splitlines() if line.startswith("| `meg train 25gaussians")]
    assert toy.endswith("(older recipe: it now trains 13500 steps) |")
    (kdd,) = [line for line in md.splitlines() if line.startswith("| `meg train kddcup99")]
    assert "older recipe" not in kdd
    assert "Rows of 25gaussians were measured before the recipe changed" in md


def test_current_rows_carry_no_note() -> None:
    md = recipes.section(INFO, [_run("25gaussians", 13500)], "--only 25gaussians --seeds 0", {"25gaussians": 13500})
    assert "older recipe" not in md and "Rows of" not in md


def test_the_step_counts_come_from_the_recipe_files() -> None:
    assert recipes.recipe_steps([_run("25gaussians", 1)]) == {"25gaussians": 13500}
