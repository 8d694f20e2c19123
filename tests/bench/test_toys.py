"""bench/toys.py's docs section: the goal per toy is stated from the saved runs (≥ 95% high
quality, every mode in every seed, MEG not behind WGAN-GP beyond the seed spread), and the
MEG-only ablations appear beside the full run with their overrides."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
toys = pytest.importorskip("toys")


def _result(meg_hq: list[float], wgan_hq: list[float], modes: list[int], **kw) -> dict:
    runs = [{"dataset": "8gaussians", "seed": s,
             "meg": {"modes_covered": m, "n_modes": 8, "high_quality_fraction": hq, "kl_modes_uniform": 0.01},
             "wgan_gp": {"modes_covered": 8, "n_modes": 8, "high_quality_fraction": w, "kl_modes_uniform": 0.01}}
            for s, (m, hq, w) in enumerate(zip(modes, meg_hq, wgan_hq, strict=True))]
    summary = {"8gaussians": {k: toys.aggregate([r[k] for r in runs]) for k in ("meg", "wgan_gp")}}
    return {"summary": summary, "runs": runs, **kw}


def test_goal_needs_95_percent_every_mode_and_meg_not_behind() -> None:
    (line,) = toys.verdict(_result([0.96, 0.97, 0.96], [0.965, 0.965, 0.97], [8, 8, 8]))
    assert line.startswith("- **8gaussians: met.**") and "level with" in line  # 0.3 points behind, spread 0.6
    (line,) = toys.verdict(_result([0.96, 0.96, 0.96], [0.98, 0.98, 0.98], [8, 8, 8]))
    assert "not met" in line and "behind" in line
    (line,) = toys.verdict(_result([0.97, 0.97, 0.97], [0.96, 0.96, 0.96], [8, 7, 8]))
    assert "not met" in line and "not every mode" in line
    (line,) = toys.verdict(_result([0.94, 0.94, 0.94], [0.93, 0.93, 0.93], [8, 8, 8]))
    assert "not met" in line and "ahead of" in line


def test_an_ablation_with_three_seeds_at_the_same_steps_is_judged_against_the_same_wgan() -> None:
    full = _result([0.96, 0.96, 0.96], [0.975, 0.975, 0.98], [8, 8, 8], steps={"8gaussians": 9000})
    ab = _result([0.975, 0.972, 0.978], [0.0, 0.0, 0.0], [8, 8, 8], steps={"8gaussians": 9000},
                 seeds=[0, 1, 2], overrides=["train.entropy=jsd"])
    ab["summary"]["8gaussians"].pop("wgan_gp")  # --no-wgan: MEG only
    main, line = toys.verdict(full, {"jsd": ab})
    assert main.startswith("- **8gaussians: not met.**")
    assert line.startswith("- **8gaussians, ablation `jsd` (`train.entropy=jsd`): met.**")
    assert "WGAN-GP 97.7%: MEG is level with it" in line  # the full run's WGAN-GP
    rep = _result([0.96, 0.96, 0.96], [0.95, 0.95, 0.95], [8, 8, 8], steps={"8gaussians": 9000},
                  seeds=[0, 1, 2], overrides=[])
    _, line = toys.verdict(full, {"again": rep})  # a run with its own WGAN-GP: judged against it
    assert line.startswith("- **8gaussians, run `again` (the recipe, its own WGAN-GP runs): met.**")
    assert "WGAN-GP 95.0%: MEG is ahead of it" in line
    stuck = _result([0.96, 0.96, 0.96], [0.95, 0.95, 0.95], [8, 8, 8], steps={"8gaussians": 9000},
                    seeds=[0, 1, 2], overrides=[])
    stuck["summary"]["8gaussians"]["meg_mala_T1"] = toys.aggregate(
        [{"modes_covered": m, "high_quality_fraction": 0.959, "kl_modes_uniform": 0.9} for m in (4, 4, 5)])
    _, line = toys.verdict(full, {"stuck": stuck})
    assert line.endswith("; with latent MALA T=1 95.9% (4.3/8 modes).")  # MALA's lost modes are said
    same = {**full, "seeds": [0, 1, 2]}  # the full run again, bit for bit: nothing new to judge
    assert toys.verdict(full, {"same": same}) == [main]
    short = {**ab, "steps": {"8gaussians": 3000}}
    assert toys.verdict(full, {"jsd": short}) == [main]  # another budget is not comparable
    assert toys.verdict(full, {"jsd": {**ab, "seeds": [0]}}) == [main]


def test_overrides_come_from_the_result_or_its_command() -> None:
    assert toys.overrides_of({"overrides": ["train.gp_on=interpolates"], "command": ""}) == [
        "train.gp_on=interpolates"]
    cmd = "python bench/toys.py --only 8gaussians --set train.gp_on=interpolates --no-wgan --set 'a.b=1 2'"
    assert toys.overrides_of({"command": cmd}) == ["train.gp_on=interpolates", "a.b=1 2"]


def _part(seed: int, hq: float, **kw) -> dict:
    r = _result([hq], [0.0], [8], steps={"8gaussians": 9000}, seeds=[seed], mala_steps=300,
                temperatures=[1.0], n_samples=2500, overrides=["train.entropy=jsd"],
                command=f"bench/toys.py --seeds {seed}", wall_seconds=10.0 + seed)
    r["runs"][0]["seed"] = seed
    r["summary"]["8gaussians"].pop("wgan_gp")
    for run in r["runs"]:
        run.pop("wgan_gp")
    return {**r, **kw}


def test_merge_pools_one_seed_parts_and_hides_them_from_the_ablations(tmp_path: Path, monkeypatch) -> None:
    merged = toys.merge_results({"a": _part(0, 0.96), "b": _part(1, 0.97), "c": _part(2, 0.98)})
    monkeypatch.setattr(toys, "RESULTS", tmp_path)
    for tag, r in {"a": _part(0, 0.96), "jsd": merged, "other": _part(5, 0.9)}.items():
        (tmp_path / f"toys_{tag}.json").write_text(json.dumps(r))
    assert sorted(toys.ablation_results()) == ["jsd", "other"]
    assert merged["seeds"] == [0, 1, 2] and merged["merged_from"] == ["a", "b", "c"]
    assert merged["summary"]["8gaussians"]["meg"]["high_quality_fraction"]["mean"] == pytest.approx(0.97)
    assert merged["wall_seconds"] == 12.0 and merged["command"].count("bench/toys.py") == 3
    with pytest.raises(SystemExit, match="differs from the first part in steps"):
        toys.merge_results({"a": _part(0, 0.96), "b": _part(1, 0.97, steps={"8gaussians": 3000})})
    with pytest.raises(SystemExit, match="more than one part"):
        toys.merge_results({"a": _part(0, 0.96), "b": _part(0, 0.97)})


def test_a_recipe_changed_since_the_run_is_named_with_its_settings() -> None:
    import argparse

    cfg = toys.configure("8gaussians", 0, argparse.Namespace(threads=1, steps=0, set=[])).to_dict()
    assert toys.recipe_changes({"settings": {"8gaussians": cfg}, "threads": 1, "overrides": []}) == {}
    old = {"model": cfg["model"], "train": {**cfg["train"], "entropy_weight": 0.5, "seed": 7,
                                             "eval_mcmc_temperature": 0.3}}
    changes = toys.recipe_changes({"settings": {"8gaussians": old}, "threads": 1, "overrides": []})
    assert changes == {"8gaussians": [f"`train.entropy_weight` 0.5 → {cfg['train']['entropy_weight']}"]}


def test_spill_table_splits_the_missed_samples_into_wide_modes_and_between_modes() -> None:
    old = _result([0.96], [0.97], [8])  # stored before the split was measured: no row
    new = _result([0.96, 0.94], [0.97, 0.97], [8, 8])
    for run, shoulder in zip(new["runs"], [0.03, 0.01], strict=True):
        run["meg"].update(shoulder_fraction=shoulder, median_distance_std=1.5)
        run["wgan_gp"].update(shoulder_fraction=0.01, median_distance_std=1.1)
    assert toys.spill_table({"(main run)": old}) == []
    md = "\n".join(toys.spill_table({"(main run)": old, "bands": new}))
    # MEG: 96% and 94% within 3 std, 3% and 1% at 3-6 std, so 1% and 5% between modes
    assert "| `bands` | 8gaussians | MEG: samples of G | 2 | 95.0 ± 1.4 | 2.0 ± 1.4 | 3.0 ± 2.8 | 1.50 ± 0.00 |" in md
    assert "| `bands` | 8gaussians | WGAN-GP (same nets, budget) | 2 | 97.0 ± 0.0 | 1.0 ± 0.0 | 2.0 ± 0.0 |" in md
    assert "(main run)" not in md
    assert ("- `bands`, 8gaussians: MEG's generator has 2.0 points fewer samples within 3 std than "
            "WGAN-GP's; +1.0 points at 3 to 6 std, +1.0 between modes. Median distance to a centre: "
            "MEG 1.50 std, WGAN-GP 1.10 (the data's 1.18). Against the data's 1.1% at 3 to 6 std, MEG's modes "
            "have heavier tails, WGAN-GP's thinner.") in md  # 2.0% and 1.0%
