"""bench/sweep_gpu.py's plan and bookkeeping: every job is distinct and reproducible by its
command, overrides are applied once, the adaptive seeds go to the best ablations, and the
result file is strict JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

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


def test_seeded_names_the_configs_run_with_every_seed() -> None:
    jobs = sweep.plan(args(only="stacked", seeded="meg_lr1e-3_w0,wgan_gp_lr1e-3"))
    for config in ("meg_lr1e-3_w0", "wgan_gp_lr1e-3"):
        assert {j["seed"] for j in jobs if j["config"] == config} == {0, 1, 2}
    assert {j["seed"] for j in jobs if j["config"] == "meg_docs"} == {0}


# ----------------------------------------------------------------------------- --render


def _fake_sweep(modes: dict[str, list[int]], kl: dict[str, float]) -> dict:
    """A sweep.json as the sweep writes it, for the configs in `modes` (one seed a value)."""
    a = args(only="stacked")
    jobs, results = [], {}
    for config, per_seed in modes.items():
        for seed, m in enumerate(per_seed):
            job = sweep.stacked_job(a, config, seed)
            method, sets, gp = sweep.STACKED_CONFIGS[config]
            train = {"lr": 2e-4, "entropy_weight": 1.0, "gp_weight": 100.0}
            for o in sets:
                k, v = o.split("=", 1)
                if k.removeprefix("train.") in train:
                    train[k.removeprefix("train.")] = float(v)
            jobs.append(job)
            hist = [{"step": 25, "mi_bound_nats": 0.5, "encoder_mse": 63.0},
                    {"step": 2000, "mi_bound_nats": 90.0, "encoder_mse": 3.0}] if method == "meg" else []
            results[job["id"]] = {**_result(m, kl[config]), "modes_covered_10": m // 2, "steps": 2000,
                                  "train_seconds": 60.0, "history": hist, "settings": {"train": train}}
    return {"jobs": jobs, "results": results, "summary": sweep.summarise(results, jobs),
            "machine": {"gpu": "GPU", "cpu_count": 16, "python": "3", "torch": "2", "date": "today"},
            "gpu_workers": 12, "wall_seconds": 60.0, "command": "python3 bench/sweep_gpu.py ...",
            "args": {"triples": 30000, "samples": 26000, "seeds": [0, 1, 2]}}


def test_render_states_the_goal_from_the_three_seed_rows() -> None:
    lose = _fake_sweep({"wgan_gp_lr1e-3": [990, 985, 980], "meg_lr1e-3_w0.03": [950, 940, 960],
                        "meg_lr1e-3_w0": [975, 970, 980], "meg_lr2e-3": [999]},
                       {"wgan_gp_lr1e-3": 0.3, "meg_lr1e-3_w0.03": 0.6, "meg_lr1e-3_w0": 0.4, "meg_lr2e-3": 0.1})
    md = sweep.render_stacked([("round 1", lose)], [], None)
    assert "not met" in md and "950 ± 10" in md and "985 ± 5" in md
    # the one-seed row with more modes does not decide the goal, but it has its row
    assert "| round 1 | `meg_lr2e-3` |" in md and "1 (999)" in md
    assert "with it off (weight 0" in md and "`meg_lr1e-3_w0` 975 ± 5 modes" in md
    win = _fake_sweep({"wgan_gp_lr1e-3": [900, 910, 920], "meg_lr1e-3_w0.03": [960, 970, 980]},
                      {"wgan_gp_lr1e-3": 0.9, "meg_lr1e-3_w0.03": 0.5})
    assert "): met on the GPU.**" in sweep.render_stacked([("round 1", win)], [], None)
    # level on modes but a higher KL: not met
    level = _fake_sweep({"wgan_gp_lr1e-3": [960, 970, 980], "meg_lr1e-3_w0.03": [960, 970, 980]},
                        {"wgan_gp_lr1e-3": 0.5, "meg_lr1e-3_w0.03": 0.6})
    assert "not met" in sweep.render_stacked([("round 1", level)], [], None)


def test_runs_of_a_config_pool_across_rounds_and_logged_runs_join_the_goal(tmp_path: Path) -> None:
    r1 = _fake_sweep({"wgan_gp_lr1e-3": [990, 980], "meg_lr1e-3_w0.03": [970, 960]},
                     {"wgan_gp_lr1e-3": 0.3, "meg_lr1e-3_w0.03": 0.35})
    r2 = _fake_sweep({"wgan_gp_lr1e-3": [970], "meg_lr1e-3_w0.03": [1000]},
                     {"wgan_gp_lr1e-3": 0.3, "meg_lr1e-3_w0.03": 0.2})
    pooled = {r["config"]: r for r in sweep.pooled_rows([("round 1", r1), ("round 2", r2)])}
    meg = pooled["meg_lr1e-3_w0.03"]
    assert meg["round"] == "r1, r2" and meg["modes_each"] == ["r1 s0: 970", "r1 s1: 960", "r2 s0: 1000"]
    assert meg["agg"]["modes_covered"]["mean"] == pytest.approx(2930 / 3)
    # 3 runs each: MEG 976.7 vs WGAN-GP 980 modes, so not met ...
    md = sweep.render_stacked([("round 1", r1), ("round 2", r2)], [], None)
    assert "not met on the GPU" in md and "976.7 modes" in md and "980.0 modes" in md
    # ... and runs known only from a log (one per line, or a config's mean) join the verdict
    log = tmp_path / "round7.log"
    log.write_text(
        "[ 1.0s] done stacked/meg_lr1e-3_w0.03/s3: ok in 9.0s {'modes_covered': 1000, "
        "'kl_modes_uniform': 0.1, 'steps': 2000}\n"
        "[ 2.0s] stacked/wgan_gp_lr1e-3 (n=2): modes_covered 950±10, modes_covered_10 700±5, "
        "kl_modes_uniform 0.5±0.1, steps 2000±0\n")
    extra = sweep.round7_runs(log)
    assert extra == {"meg_lr1e-3_w0.03": {"runs": [(1000.0, 0.1)]},
                     "wgan_gp_lr1e-3": {"n": 2, "modes_mean": 950.0, "kl_mean": 0.5}}
    md = sweep.render_stacked([("round 1", r1), ("round 2", r2)], [], None, extra)
    assert "met on the GPU" in md and "not met" not in md.split("\n")[2]
    assert "982.5 modes on average with KL 0.250 over 4 runs" in md and "968.0 modes, KL 0.380 over 5 runs" in md


def test_rows_show_only_the_overrides_beyond_the_base_and_the_curves_ends() -> None:
    sw = _fake_sweep({"meg_lr1e-3_w0.03": [950], "wgan_gp_lr1e-3": [990]},
                     {"meg_lr1e-3_w0.03": 0.6, "wgan_gp_lr1e-3": 0.3})
    rows = {r["config"]: r for r in sweep.stacked_rows(sw, "round 1")}
    assert rows["meg_lr1e-3_w0.03"]["overrides"] == ["train.entropy_weight=0.03", "train.lr=1e-3"]
    assert rows["wgan_gp_lr1e-3"]["entropy_weight"] is None and rows["wgan_gp_lr1e-3"]["penalty"] == 10.0
    assert rows["meg_lr1e-3_w0.03"]["agg"]["final_mi_bound_nats"] == 90.0
    ws = sweep.weight_sweep(list(rows.values()))
    assert ws == {("data", 100.0, 1e-3): [(0.03, "950 modes, KL 0.60 (1 run)")]}


def test_cpu_rows_group_seeds_by_tag(tmp_path: Path) -> None:
    for seed, modes in enumerate([940, 960]):
        d = {"args": {"tag": "cpu_meg_lr1e-3_w0.03", "seed": seed, "only": "meg", "gp_weight": 10.0},
             "command": "bench/stacked_mnist.py ...", "cpu_seconds": 320.0, "machine": {"date": f"d{seed}", "cpu": "CPU", "cpu_count": 2, "torch": "2"},
             "settings": {"train": {"lr": 1e-3, "entropy_weight": 0.03, "gp_weight": 100.0}},
             "results": {"meg": {"modes_covered": modes, "modes_covered_10": 500, "kl_modes_uniform": 0.6,
                                 "steps": 2000, "train_seconds": 300.0, "train_cpu_seconds": 290.0}}}
        (tmp_path / f"stacked_mnist_cpu_meg_s{seed}.json").write_text(json.dumps(d))
    (row,) = sweep.cpu_rows(sorted(tmp_path.glob("*.json")))
    assert row["config"] == "meg_lr1e-3_w0.03" and row["modes_each"] == [940, 960]
    assert row["agg"]["modes_covered"]["mean"] == 950 and row["train_cpu_min"] == [290.0 / 60] * 2
    md = sweep.render_stacked([("round 1", _fake_sweep({"wgan_gp": [900]}, {"wgan_gp": 1.0}))], [row], None)
    assert "| `meg_lr1e-3_w0.03` | MEG (entropy weight 0.03, λ 100 on data) | 0.001 | 2000 | 950 ± 14 |" in md
    assert "≤ 4.8 CPU-minutes (within the issue's 15)" in md


def _cpu_row(config: str, method: str, modes: list[int], kl: float, steps: int = 2000) -> dict[str, Any]:
    return {"config": config, "method": method, "seeds": list(range(len(modes))), "modes_each": modes,
            "agg": {"modes_covered": {"mean": sum(modes) / len(modes), "std": None},
                    "kl_modes_uniform": {"mean": kl, "std": None}},
            "steps": [steps] * len(modes), "gp_weight": 10.0,
            "settings": {"lr": 1e-3, "entropy_weight": 0.03, "gp_weight": 10.0, "entropy": "jsd"}}


def test_cpu_goal_pairs_rows_by_lr_and_steps_and_names_the_winner() -> None:
    rows = [_cpu_row("wgan", "wgan_gp", [980, 990], 0.35), _cpu_row("meg_a", "meg", [990, 996], 0.30),
            _cpu_row("meg_b", "meg", [990, 996], 0.40), _cpu_row("meg_low", "meg", [900, 940], 0.30),
            _cpu_row("meg_4k", "meg", [999, 999], 0.10, steps=4000)]
    (para,) = [line for line in sweep.cpu_goal(rows) if line]
    assert para.startswith("**lr 0.001, 2000 steps: the goal is met on the means only, by `meg_a`.** That is by less")
    assert "`meg_b` 993 modes, KL 0.400 (2 seed(s); more modes, higher KL)" in para
    assert "(2 seed(s); ahead on both counts, below 950)" not in para  # meg_low has fewer modes
    assert "`meg_low` 920 modes, KL 0.300 (2 seed(s); fewer modes, lower KL)" in para
    assert "meg_4k" not in para  # another step count is another budget
    lose = [_cpu_row("wgan", "wgan_gp", [999], 0.1), _cpu_row("meg_a", "meg", [990], 0.3)]
    assert "the goal is not met.**" in sweep.cpu_goal(lose)[1]
    assert "JSD estimator" in sweep._cpu_method(rows[1])
    head = sweep.cpu_headline(rows)
    assert head.startswith("**Goal at an equal CPU budget") and "`meg_a`" in head
    assert f": met on the means only, {sweep.UNCLEAR}.**" in head  # no spread, no pairs: no clear lead

    def spread(modes_sd: float) -> list[dict[str, Any]]:
        return [{**r, "agg": {k: {**a, "std": modes_sd if k == "modes_covered" else 0.01}
                              for k, a in r["agg"].items()}} for r in rows]

    assert "met on the means only" in sweep.cpu_headline(spread(20.0))  # 8 modes ahead, std 20
    assert f"met on the means only, by `meg_a`.** That is {sweep.UNCLEAR}." in sweep.cpu_goal(spread(20.0))[1]
    assert "the goal is met by `meg_a`.** WGAN-GP" in sweep.cpu_goal(spread(2.0))[1]
    assert ": met.**" in sweep.cpu_headline(spread(2.0))
    assert "on the means only" not in sweep.cpu_goal(spread(2.0))[1]
    assert "`meg_b`" not in head and "Not met at" not in head
    other = [{**r, "settings": {**r["settings"], "lr": 2e-4}} for r in lose]
    assert "Not met at lr 0.0002, 2000 steps: MEG's best (`meg_a`) 990 modes" in sweep.cpu_headline(rows + other)
    head = sweep.cpu_headline(lose)
    assert ": not met.** Closest, by modes: " in head and "`meg_a`): 990 modes" in head
    assert "Seed by seed" not in head  # one seed each: nothing to pair
    a, w = (_cpu_row("meg_a", "meg", [990, 996, 980], 0.3), _cpu_row("wgan", "wgan_gp", [992, 990], 0.3))
    a["kl_each"], w["kl_each"], w["seeds"] = [0.3, 0.2, 0.4], [0.25, 0.35], [0, 2]
    assert "training triples): -2, -10 modes, +0.050, +0.050 KL; mean -6.0 modes" in sweep._paired(a, w)
    assert sweep._paired(a, w).endswith("+0.050 KL (+0.050 to +0.050) over 2 seeds.")


def test_a_weight_0_row_is_a_control_never_the_winner_or_meg_s_best() -> None:
    w = _cpu_row("wgan", "wgan_gp", [980, 990], 0.35)
    off = _cpu_row("meg_w0", "meg", [999, 999], 0.10)
    off["settings"] = {**off["settings"], "entropy_weight": 0.0}
    on = _cpu_row("meg_a", "meg", [970, 980], 0.40)
    (para,) = [line for line in sweep.cpu_goal([w, off, on]) if line]
    assert para.startswith("**lr 0.001, 2000 steps: the goal is not met.**")
    assert "`meg_w0` 999 modes, KL 0.100 (2 seed(s); control: entropy term off, not MEG)" in para
    head = sweep.cpu_headline([w, off, on])
    assert ": not met.** Closest, by modes: " in head and "`meg_a`" in head and "`meg_w0`" not in head
    assert "No MEG row" in sweep.cpu_headline([w, off])
    off["kl_each"], on["kl_each"] = [0.1, 0.1], [0.3, 0.5]
    off["settings"]["entropy"] = on["settings"]["entropy"] = "jsd"
    (effect,) = [line for line in sweep.cpu_goal([w, off, on]) if line.startswith("What MEG's entropy")]
    assert "(`meg_a` minus the control `meg_w0`; a seed fixes" in effect and "-29, -19 modes" in effect
    other = {**on, "settings": {**on["settings"], "gp_weight": 100.0}}  # not its control: no line
    assert not [line for line in sweep.cpu_goal([w, off, other]) if line.startswith("What MEG's")]


def test_t_interval_matches_the_textbook_value() -> None:
    # mean 2, sample sd 1, n 4: half-width t(0.975, 3) · 1 / 2 = 3.182446 / 2
    mean, low, high = sweep.t_interval([1.0, 2.0, 2.0, 3.0])
    sd = (2 / 3) ** 0.5
    assert mean == 2.0 and abs((high - low) / 2 - 3.182446 * sd / 2) < 1e-5


def test_a_consistent_paired_lead_is_a_clear_win_even_within_the_seed_spread() -> None:
    seeds = [0, 1, 2, 3, 4]
    w = {**_cpu_row("wgan", "wgan_gp", [950, 990, 970, 999, 960], 0.35), "kl_each": [0.5, 0.3, 0.4, 0.2, 0.45]}
    m = {**_cpu_row("meg", "meg", [953, 992, 974, 1000, 964], 0.32), "kl_each": [0.47, 0.28, 0.36, 0.18, 0.41]}
    for r in (w, m):  # seed spread ~20 modes: a 3-mode lead is inside it, but on every seed
        r["agg"]["modes_covered"]["std"], r["agg"]["kl_modes_uniform"]["std"] = 20.0, 0.1
        r["agg"]["modes_covered"]["mean"] = sum(r["modes_each"]) / 5
    assert m["seeds"] == seeds and not sweep._beyond_spread(m, w) and sweep._paired_lead(m, w)
    assert ": met.**" in sweep.cpu_headline([w, m])
    noisy = {**m, "modes_each": [960, 985, 977, 1000, 964]}  # -5 on one seed: the interval spans 0
    noisy["agg"] = {**m["agg"], "modes_covered": {"mean": sum(noisy["modes_each"]) / 5, "std": 20.0}}
    assert not sweep._paired_lead(noisy, w)
    assert "met on the means only, by less than the seed spread, and the seed-by-seed 95% interval" \
        in sweep.cpu_headline([w, noisy])
    assert not sweep._paired_lead({**m, "seeds": [0, 1, 7, 8, 9]}, w)  # two common seeds: too few


def test_stored_rounds_render_their_summaries() -> None:
    root = Path(__file__).resolve().parents[2] / "bench" / "results"
    paths = sorted(root.glob("sweep_gpu_round*.json"))
    if not paths:
        pytest.skip("no stored sweep results")
    md = sweep.render_main(paths, "no-such-dir/*.json", write=False)
    for path in paths:
        for key, agg in json.loads(path.read_text())["summary"].items():
            if key.startswith("stacked/"):
                assert f"`{key.split('/', 1)[1]}`" in md
                assert sweep._pm(agg, "modes_covered", ".0f") in md
