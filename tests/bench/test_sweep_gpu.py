"""bench/sweep_gpu.py's plan and bookkeeping: every job is distinct and reproducible by its
command, overrides are applied once, the adaptive seeds go to the best ablations, and the
result file is strict JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sweep = pytest.importorskip("sweep_gpu")


def args(**kw):
    import argparse

    base = dict(only="stacked,toys", steps=2000, toy_steps=0, toy_mala_steps=300, device="cuda",
                stacked_cap_s=240.0, toy_cap_s=300.0, triples=30000, samples=26000,
                seeds=[0, 1, 2])
    base.update(kw)
    return argparse.Namespace(**base)


def test_plan_jobs_are_distinct_and_carry_their_command() -> None:
    jobs = sweep.plan(args())
    ids = [j["id"] for j in jobs]
    assert len(ids) == len(set(ids))
    for j in jobs:
        keys = [o.split("=", 1)[0] for o in j["overrides"]]
        assert len(keys) == len(set(keys)), j["id"]  # each key once: the command is unambiguous
        assert all(f"--set {o}" in j["bench_command"] for o in j["overrides"])
        if j["task"] == "stacked":
            assert f"--only {j['method']}" in j["bench_command"] and "--device cuda" in j["bench_command"]
            assert f"--seed {j['seed']}" in j["bench_command"]
        elif j["method"] == "meg":
            assert j["meg_command"].startswith(f"meg train {j['dataset']} ")
    # the rows the docs compare run three seeds, on both toys too
    for config in sweep.STACKED_SEEDED:
        assert {j["seed"] for j in jobs if j["task"] == "stacked" and j["config"] == config} == {0, 1, 2}
    for toy in sweep.TOYS:
        for config in sweep.TOY_CONFIGS:
            assert {j["seed"] for j in jobs if j.get("dataset") == toy and j["config"] == config} == {0, 1, 2}
    # the 3-seed rows are started first
    first = [j["config"] for j in jobs if j["task"] == "stacked"][: 3 * len(sweep.STACKED_SEEDED)]
    assert set(first) == set(sweep.STACKED_SEEDED)


def test_dedupe_keeps_the_last_value_of_each_key() -> None:
    assert sweep.dedupe(["a.b=1", "c.d=2", "a.b=3"]) == ["c.d=2", "a.b=3"]


def _result(modes: int, kl: float, complete: bool = True) -> dict:
    return {"status": "ok", "modes_covered": modes, "kl_modes_uniform": kl, "budget_complete": complete}


def test_adaptive_seeds_go_to_the_best_finished_ablations() -> None:
    a = args(only="stacked")
    jobs = sweep.plan(a)
    single = [j for j in jobs if j["config"] not in sweep.STACKED_SEEDED]
    meg_single = [j for j in single if sweep.STACKED_CONFIGS[j["config"]][0] == "meg"]
    results = {j["id"]: _result(100, 2.0) for j in single}
    best, second, cut_short = meg_single[3], meg_single[5], meg_single[0]
    results[best["id"]] = _result(900, 1.0)
    results[second["id"]] = _result(800, 1.0)
    results[cut_short["id"]] = _result(999, 0.5, complete=False)  # budget not reached: not ranked
    extra = sweep.adaptive_seeds(a, jobs, results, [], 2)
    assert [j["id"] for j in extra] == [f"stacked/{best['config']}/s1", f"stacked/{best['config']}/s2",
                                        f"stacked/{second['config']}/s1", f"stacked/{second['config']}/s2"]
    # not while an ablation waits to start, nor before 3/4 of them are in
    assert sweep.adaptive_seeds(a, jobs, results, [single[-1]], 2) == []
    few = {j["id"]: results[j["id"]] for j in single[: len(single) // 2]}
    assert sweep.adaptive_seeds(a, jobs, few, [], 2) == []


def test_results_are_strict_json() -> None:
    import numpy as np

    raw = {"a": float("nan"), "b": [np.float32(1.5), np.int64(3)], "c": {"d": float("inf")}}
    text = json.dumps(sweep._clean(json.loads(json.dumps(raw, default=sweep._json_default))),
                      allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.5, 3], "c": {"d": None}}


def test_summary_aggregates_ok_runs_per_config() -> None:
    a = args(only="stacked", seeds=[0, 1])
    jobs = [j for j in sweep.plan(a) if j["config"] == "wgan_gp"]
    results = {jobs[0]["id"]: {**_result(900, 1.0), "steps": 2000, "train_seconds": 60.0, "modes_covered_10": 400},
               jobs[1]["id"]: {"status": "killed: over its wall-clock cap"}}
    s = sweep.summarise(results, jobs)["stacked/wgan_gp"]
    assert s["n_seeds"] == 1 and s["modes_covered"]["mean"] == 900 and s["modes_covered"]["std"] is None
    assert not math.isnan(s["kl_modes_uniform"]["mean"])
