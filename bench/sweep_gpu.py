"""One command that runs the StackedMNIST ablation sweep (MEG configs against WGAN-GP, on
one GPU shared by several processes) and the 2-D toys (MEG and WGAN-GP, CPU processes of
one thread each) in parallel on one machine, each run under a hard wall-clock cap.

    PYTHONPATH=. MEG_DATA_DIR=.gpudata python3 bench/sweep_gpu.py --out DIR
        [--steps 2000] [--device cuda] [--gpu-workers 10] [--cpu-workers 15]
        [--total-minutes 7] [--only stacked,toys] [--smoke]

What runs (`plan()` lists every job; `--list` prints them without running anything):
- StackedMNIST (`bench/stacked_mnist.py`'s data, classifier, nets and metrics): WGAN-GP
  and MEG configurations at the same step budget: the docs' current MEG config, the
  proposed config, and one-factor ablations (entropy estimator, entropy weight, penalty λ
  and where it applies, n_critic, learning rate, MALA negatives). The baseline and the
  proposed configs run 3 seeds, the ablations one.
- Toys (`bench/toys.py`'s recipes and metrics): 25gaussians and 8gaussians, MEG with the
  recipe, MEG with the proposed change and WGAN-GP, 3 seeds each.

Every run records its config, its exact equivalent command (`bench_command`, and
`meg_command` where a `meg train` recipe exists), steps reached, wall time, device, the
training curves (energy gap, encoder MSE against z and the MI bound it implies) and its
scores. The main process rewrites DIR/sweep.json (and DIR/sweep_grids.json, 36 samples of
each StackedMNIST run as base64 PNG) after every finished run, so a sweep that is killed
still leaves what finished; DIR/sweep_log.txt is its log. At the end it also writes
DIR/sweep_curves.png (MI bound, encoder MSE and energy gap over training) and
DIR/sweep_samples.png (the sample grids of the first seed).

Scheduling: one CPU per process; up to --gpu-workers StackedMNIST processes share the GPU,
the toys take the other CPUs (all of them once no StackedMNIST job waits). A job starts
only when it is likely to finish before --total-minutes (the median duration of finished
runs of its kind, else a first guess); its training stops at 80% of its cap or 45 s before
the deadline, whichever is first (`budget_complete` false then), and a process past its
cap + 45 s, or alive at the deadline, is killed. When 3/4 of the one-seed ablations are in,
seeds 1 and 2 of the best `--adaptive` of them are queued first, time allowing.

Scratch files (classifier weights, run directories, worker logs) go to a temporary
directory, never to DIR. Workers are this script with `--worker JOB.json`; needs torch,
numpy, scikit-learn, matplotlib (no web-service packages).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

SEEDS = (0, 1, 2)
TOYS = ("25gaussians", "8gaussians")
LOG_EVERY = 25  # training-curve resolution (steps)
DATA_ENV = 'MEG_DATA_DIR="$MEG_DATA_DIR"'

# ----------------------------------------------------------------------------- the plan

# StackedMNIST: --set overrides on top of bench/stacked_mnist.py's configure() (the `mnist`
# recipe reduced to fit a CPU: conv width 16, head 128, z 64, batch 64, lr 2e-4).
# "meg_docs" is the config behind docs/benchmarks.md's 422/1000 row.
STACKED_BASE = ["train.lr_schedule=linear"]
MEG_DOCS = ["train.entropy_weight=0.1"]
# The proposed config, a best guess from 2000-step CPU runs (seed 0, linear schedule): the
# entropy term works on images (encoder MSE 64 -> 4.2 of E‖z‖² = 64, MI bound 0 -> 87 nats,
# modes rising steadily 33 -> 291 of 5,000 samples, no collapse) but a heavier entropy
# weight slows sample quality (after a 500-step schedule: weight 0.1 48 modes, 1 32,
# 10 25 of 10,000 samples), and λ 10 with weight 1 (the same weight-to-energy ratio)
# tracked the docs' config (301 vs 291 modes). So: the docs' λ, a lighter weight.
PROPOSED = ["train.entropy_weight=0.03"]
STACKED_CONFIGS: dict[str, tuple[str, list[str], float]] = {
    # name: (method, overrides, WGAN-GP λ (unused by MEG))
    "meg_proposed": ("meg", PROPOSED, 0.0),
    "wgan_gp": ("wgan_gp", [], 10.0),
    "meg_docs": ("meg", MEG_DOCS, 0.0),
}
# One-factor ablations around the docs' config (and a few around the proposed one), one
# seed each, cheapest and most telling first. PAPER_PENALTY: the paper's code's λ 10 on a
# score norm taken over the channel axis only and averaged over pixels, i.e. λ 10 / (28·28)
# on the full squared norm this code penalises.
PAPER_PENALTY = 10.0 / (28 * 28)
_ABLATIONS: dict[str, list[str]] = {
    "meg_w0": ["train.entropy_weight=0.0"],
    "meg_w1": ["train.entropy_weight=1.0"],
    "meg_gp10": ["train.entropy_weight=0.1", "train.gp_weight=10.0"],
    "meg_gp1": ["train.entropy_weight=0.1", "train.gp_weight=1.0"],
    "meg_gp1_w10": ["train.entropy_weight=10.0", "train.gp_weight=1.0"],
    "meg_jsd_w0.5": ["train.entropy=jsd", "train.entropy_weight=0.5"],
    "meg_paperlike": ["train.entropy=jsd", "train.entropy_weight=0.5",
                      f"train.gp_weight={PAPER_PENALTY:.6f}", "train.lr=1e-4"],
    "meg_ncritic2": ["train.entropy_weight=0.1", "train.n_critic=2"],
    "meg_lr5e-4": ["train.entropy_weight=0.1", "train.lr=5e-4"],
    "meg_w0.01": ["train.entropy_weight=0.01"],
    "meg_w10": ["train.entropy_weight=10.0"],
    "meg_gp1000": ["train.entropy_weight=0.1", "train.gp_weight=1000.0"],
    "meg_ncritic1": ["train.entropy_weight=0.1", "train.n_critic=1"],
    "meg_lr1e-4": ["train.entropy_weight=0.1", "train.lr=1e-4"],
    "meg_constant_lr": ["train.entropy_weight=0.1", "train.lr_schedule=constant"],
    "meg_gp10_w1": ["train.entropy_weight=1.0", "train.gp_weight=10.0"],
    "meg_proposed_lr5e-4": [*PROPOSED, "train.lr=5e-4"],
    "meg_proposed_ncritic2": [*PROPOSED, "train.n_critic=2"],
    "meg_proposed_jsd": [*PROPOSED, "train.entropy=jsd", "train.entropy_weight=0.15"],
    "meg_mala5": ["train.entropy_weight=0.1", "train.mcmc_steps=5", "train.mcmc_step_size=0.01"],
    # Second round, after the first sweep on an H200: lr 5e-4 was the best one-factor
    # change (769 modes against 414 for the docs' config), so larger learning rates, with
    # WGAN-GP given the same ones (equal tuning for both methods).
    "meg_lr1e-3": ["train.entropy_weight=0.1", "train.lr=1e-3"],
    "meg_lr2e-3": ["train.entropy_weight=0.1", "train.lr=2e-3"],
    "meg_lr1e-3_w0.03": ["train.entropy_weight=0.03", "train.lr=1e-3"],
    "meg_lr1e-3_w0": ["train.entropy_weight=0.0", "train.lr=1e-3"],
    "meg_lr5e-4_gp10": ["train.entropy_weight=0.1", "train.lr=5e-4", "train.gp_weight=10.0"],
}
# Round 4, everything at lr 1e-3 (round 3's equal-tuning point) around `meg_lr1e-3_w0.03`:
# where the zero-centred penalty is taken (real rows, the paper's, against interpolates
# between rows and samples, the 0-GP of Thanh-Tung et al. 2019); noise on G(z) before the
# MI estimator reads it (a test of whether the entropy term's information about z sits in
# pixel changes too small to tell modes apart: the MI bound reached 97 nats while coverage
# fell as the weight grew); and the round-1 ablations that never ran, now at lr 1e-3.
LR3 = ["train.lr=1e-3"]
INTERP = ["train.gp_on=interpolates"]
for _k, _v in {
    "meg_lr1e-3_interp_w0.03": [*INTERP, "train.entropy_weight=0.03"],
    "meg_lr1e-3_interp_w0": [*INTERP, "train.entropy_weight=0.0"],
    "meg_lr1e-3_interp_w0.1": [*INTERP, "train.entropy_weight=0.1"],
    "meg_lr1e-3_interp_gp10_w0.03": [*INTERP, "train.gp_weight=10.0", "train.entropy_weight=0.03"],
    "meg_lr1e-3_noise0.1_w0.03": ["train.entropy_noise=0.1", "train.entropy_weight=0.03"],
    "meg_lr1e-3_noise0.3_w0.03": ["train.entropy_noise=0.3", "train.entropy_weight=0.03"],
    "meg_lr1e-3_noise0.3_w0.1": ["train.entropy_noise=0.3", "train.entropy_weight=0.1"],
    "meg_lr1e-3_interp_noise0.3_w0.03": [*INTERP, "train.entropy_noise=0.3",
                                         "train.entropy_weight=0.03"],
    "meg_lr1e-3_w0.01": ["train.entropy_weight=0.01"],
    "meg_lr1e-3_jsd_w0.15": ["train.entropy=jsd", "train.entropy_weight=0.15"],
    "meg_lr1e-3_ncritic1_w0.03": ["train.n_critic=1", "train.entropy_weight=0.03"],
    "meg_lr1e-3_gp1000_w0.03": ["train.gp_weight=1000.0", "train.entropy_weight=0.03"],
    "meg_lr1e-3_gp10_w0.03": ["train.gp_weight=10.0", "train.entropy_weight=0.03"],
    "meg_lr1e-3_constant_w0.03": ["train.lr_schedule=constant", "train.entropy_weight=0.03"],
    # Round 6, after rounds 4-5 put the interpolate penalty at λ 10 level with WGAN-GP:
    # the entropy weight at that penalty (0 is the no-entropy control) and the JSD estimator.
    "meg_lr1e-3_interp_gp10_w0": [*INTERP, "train.gp_weight=10.0", "train.entropy_weight=0.0"],
    "meg_lr1e-3_interp_gp10_w0.01": [*INTERP, "train.gp_weight=10.0", "train.entropy_weight=0.01"],
    "meg_lr1e-3_interp_gp10_w0.1": [*INTERP, "train.gp_weight=10.0", "train.entropy_weight=0.1"],
    "meg_lr1e-3_interp_gp10_jsd_w0.15": [*INTERP, "train.gp_weight=10.0", "train.entropy=jsd",
                                         "train.entropy_weight=0.15"],
    "meg_lr1e-3_mala5_w0.03": ["train.mcmc_steps=5", "train.mcmc_step_size=0.01",
                               "train.entropy_weight=0.03"],
}.items():
    _ABLATIONS[_k] = [*LR3, *_v]
for _k, _v in _ABLATIONS.items():
    STACKED_CONFIGS[_k] = ("meg", _v, 0.0)
STACKED_SEEDED = ("meg_proposed", "wgan_gp", "meg_docs")  # 3 seeds; the rest one
STACKED_CONFIGS["wgan_gp_lr5e-4"] = ("wgan_gp", ["train.lr=5e-4"], 10.0)
STACKED_CONFIGS["wgan_gp_lr1e-3"] = ("wgan_gp", ["train.lr=1e-3"], 10.0)

# Toys: --set overrides on top of the recipe (training/recipes/NAME.toml); WGAN-GP as
# bench/toys.py runs it (λ 0.1, MEG's lr and schedule, the same steps).
TOY_CONFIGS: dict[str, tuple[str, list[str]]] = {
    "meg_proposed": ("meg", ["train.entropy_weight=0.001"]),
    "wgan_gp": ("wgan_gp", []),
}
TOY_ABLATIONS: dict[str, list[str]] = {  # MEG, one seed each
    "meg_recipe": [],
    "meg_w0": ["train.entropy_weight=0.0"],
    "meg_w0.0003": ["train.entropy_weight=0.0003"],
}


def dedupe(overrides: list[str]) -> list[str]:
    """`section.key=value` overrides with each key once (its last value, at its last place)."""
    last = {o.split("=", 1)[0]: i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[o.split("=", 1)[0]] == i]


def stacked_bench_command(method: str, seed: int, steps: int, device: str, overrides: list[str],
                          gp_weight: float) -> str:
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    gp = f" --gp-weight {gp_weight:g}" if method == "wgan_gp" else ""
    return (f"{DATA_ENV} python3 bench/stacked_mnist.py --only {method} --steps {steps} "
            f"--seed {seed} --device {device} --threads 1{gp} {sets}").strip()


def toy_commands(name: str, method: str, seed: int, steps: int, overrides: list[str]) -> tuple[str, str]:
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    st = f" --steps {steps}" if steps else ""
    bench = (f"python3 bench/toys.py --only {name} --seeds {seed}{st} --threads 1 {sets}").strip()
    if method != "meg":
        return bench, ""
    msets = [f"train.seed={seed}", "train.num_threads=1", "train.device=cpu",
             *([f"train.steps={steps}"] if steps else []), *overrides]
    meg = f"meg train {name} " + " ".join(f"--set {shlex.quote(o)}" for o in msets) + " --out models/" + name
    return bench, meg


def stacked_job(args: argparse.Namespace, config: str, seed: int) -> dict[str, Any]:
    method, sets, gp = STACKED_CONFIGS[config]
    overrides = dedupe([*STACKED_BASE, *sets, f"train.log_every={LOG_EVERY}"])
    return {
        "id": f"stacked/{config}/s{seed}", "task": "stacked", "config": config,
        "method": method, "seed": seed, "steps": args.steps, "overrides": overrides,
        "gp_weight": gp, "device": args.device, "pool": "gpu",
        "cap_s": args.stacked_cap_s, "triples": args.triples, "samples": args.samples,
        "bench_command": stacked_bench_command(method, seed, args.steps, args.device,
                                               overrides, gp),
    }


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every job, most important first (the scheduler starts them in this order): the
    3-seed StackedMNIST rows, then the one-seed ablations; the toys run beside them on
    the CPUs. More seeds of the best ablations are added while the sweep runs
    (`adaptive_seeds`)."""
    jobs: list[dict[str, Any]] = []
    only = set(args.only.split(","))
    if "stacked" in only:
        seeded_arg = getattr(args, "seeded", "")
        with_seeds = ([] if seeded_arg == "none" else seeded_arg.split(",")) if seeded_arg \
            else list(STACKED_SEEDED)
        seeded = [(c, s) for s in args.seeds for c in with_seeds]
        single = [(c, args.seeds[0]) for c in STACKED_CONFIGS if c not in with_seeds]
        for config, seed in seeded + single:
            jobs.append(stacked_job(args, config, seed))
    if "toys" in only:
        toy_jobs = [(c, s) for s in args.seeds for c in TOY_CONFIGS]
        toy_jobs += [(c, args.seeds[0]) for c in TOY_ABLATIONS]
        for config, seed in toy_jobs:
            for name in TOYS:
                method, sets = TOY_CONFIGS.get(config, ("meg", TOY_ABLATIONS.get(config, [])))
                bench, meg = toy_commands(name, method, seed, args.toy_steps, sets)
                jobs.append({
                    "id": f"{name}/{config}/s{seed}", "task": "toy", "dataset": name,
                    "config": config, "method": method, "seed": seed, "steps": args.toy_steps,
                    "overrides": list(sets), "gp_weight": 0.1, "device": "cpu", "pool": "cpu",
                    "cap_s": args.toy_cap_s, "mala_steps": args.toy_mala_steps,
                    "bench_command": bench, "meg_command": meg,
                })
    return jobs


# ----------------------------------------------------------------------------- workers


def _history_of(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text())["history"] if path.is_file() else []


def run_stacked(job: dict[str, Any], work: Path) -> dict[str, Any]:
    import numpy as np
    import stacked_mnist as sm
    import torch
    from wgan_gp import train_wgan_gp

    from meg.render import image_grid
    from training.data.mnist import load_mnist_arrays
    from training.train import train

    seed, device = job["seed"], job["device"]
    images, labels, _ = load_mnist_arrays()
    pixels = (images.reshape(len(images), -1).astype(np.float32) / np.float32(127.5) - 1.0).astype(np.float32)
    clf = sm.DigitCNN()
    clf.load_state_dict(torch.load(work / f"classifier_s{seed}.pt", map_location="cpu", weights_only=True))
    clf.to(device).eval()
    ds, _ = sm.stacked_dataset(pixels, job["triples"], 1000, seed)
    # Training stops at train_cap_s (the scheduler's share of the cap and of the time left);
    # the rest is for sampling and scoring.
    train_minutes = job["train_cap_s"] / 60.0
    ns = argparse.Namespace(latent_dim=64, conv_width=16, hidden=128, steps=job["steps"], batch=64,
                            lr=2e-4, threads=1, max_minutes=round(train_minutes, 3),
                            set=job["overrides"], device=device)
    cfg = sm.configure(ns, seed)
    t0 = time.time()
    if job["method"] == "meg":
        res = train(cfg, None, work / "runs" / job["id"].replace("/", "_"), progress=False, dataset=ds)
        gen, steps, train_s = res.model.generator, res.steps, res.seconds
        history = _history_of(res.run_dir)
    else:
        cfg.train.max_minutes = round(train_minutes, 3)
        wres = train_wgan_gp(cfg, ds, gp_weight=job["gp_weight"], progress=False, log_every=LOG_EVERY)
        gen, steps, train_s, history = wres.generator, wres.steps, wres.seconds, wres.history
    gen.eval()
    x = sm.generate(gen, job["samples"], cfg.model.latent_dim, seed)
    metrics = sm.mode_metrics(sm.mode_ids(clf, x))
    grid = image_grid(x[:36], [3, sm.SIDE, sm.SIDE], [-1.0, 1.0])
    return {**metrics, "steps": steps, "train_seconds": round(train_s, 2),
            "budget_complete": steps >= job["steps"], "history": history,
            "settings": {"model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"]},
            "sample_grid_png_b64": base64.b64encode(grid).decode("ascii"),
            "score_seconds": round(time.time() - t0 - train_s, 2)}


def run_toy(job: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch
    import toys as tb
    from wgan_gp import train_wgan_gp

    from meg.mala import sample_latent
    from training.data.toys import load_toy
    from training.train import train

    name, seed = job["dataset"], job["seed"]
    ns = argparse.Namespace(threads=1, steps=job["steps"], set=job["overrides"])
    cfg = tb.configure(name, seed, ns)
    cfg.train.log_every = LOG_EVERY * 2
    cfg.train.max_minutes = round(job["train_cap_s"] / 60.0, 3)
    data = load_toy(cfg.data.toy, n=cfg.data.n, seed=cfg.data.split_seed)
    out: dict[str, Any] = {}
    if job["method"] == "meg":
        res = train(cfg, None, work / "runs" / job["id"].replace("/", "_"), progress=False, dataset=data)
        gen, energy, steps, train_s = res.model.generator, res.model.energy, res.steps, res.seconds
        history = _history_of(res.run_dir)
    else:
        wres = train_wgan_gp(cfg, data, gp_weight=job["gp_weight"], progress=False, log_every=LOG_EVERY * 2)
        gen, energy, steps, train_s, history = wres.generator, wres.critic, wres.steps, wres.seconds, wres.history
    gen.eval()
    energy.eval()
    x = tb.prior_samples(gen, cfg.model.latent_dim, seed)
    out = {**tb.score(name, x), "steps": steps, "planned_steps": cfg.train.steps,
           "budget_complete": steps >= cfg.train.steps, "train_seconds": round(train_s, 2),
           "history": history,
           "settings": {"model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"]}}
    if job["method"] == "meg" and job.get("mala_steps", 0) > 0:
        t1 = time.time()
        mres = sample_latent(gen, energy, tb.N_SAMPLES, cfg.model.latent_dim, job["mala_steps"],
                             step_size=cfg.train.mcmc_step_size, temperature=1.0, adapt=True,
                             rng=torch.Generator().manual_seed(777 + seed))
        with torch.no_grad():
            xm = gen(mres.z).numpy()
        out["mala_T1"] = {**tb.score(name, xm), "mala_steps": job["mala_steps"],
                          "acceptance": float(mres.acceptance.mean()),
                          "seconds": round(time.time() - t1, 2)}
    return out


def adaptive_seeds(args: argparse.Namespace, jobs: list[dict[str, Any]],
                   results: dict[str, dict[str, Any]], pending: list[dict[str, Any]],
                   k: int) -> list[dict[str, Any]]:
    """Seeds 1, 2 of the `k` one-seed MEG ablations with the most modes covered (ties: the
    lower KL) among those finished, once every one-seed StackedMNIST job has started and
    at least 3/4 of them have finished; [] before then."""
    single = [j for j in jobs if j["task"] == "stacked" and j["config"] not in STACKED_SEEDED
              and j["seed"] == args.seeds[0]]
    done = [j for j in single if j["id"] in results]
    if not single or any(j in pending for j in single) or len(done) < 0.75 * len(single):
        return []
    single = done
    ok = [(results[j["id"]], j["config"]) for j in single
          if results[j["id"]].get("status") == "ok" and results[j["id"]].get("budget_complete")
          and STACKED_CONFIGS[j["config"]][0] == "meg"]
    ok.sort(key=lambda rc: (-rc[0]["modes_covered"], rc[0]["kl_modes_uniform"]))
    have = {j["id"] for j in jobs}
    return [stacked_job(args, c, s) for _, c in ok[:k] for s in args.seeds[1:]
            if f"stacked/{c}/s{s}" not in have]


def _watchdog(cap_s: float) -> None:
    """End this worker when the sweep that started it is gone, or long past its cap."""
    import threading

    parent, t0 = os.getppid(), time.time()

    def watch() -> None:
        while True:
            time.sleep(2.0)
            if os.getppid() != parent or time.time() - t0 > cap_s + 90:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def worker_main(job_path: Path) -> None:
    import torch

    job = json.loads(job_path.read_text())
    _watchdog(float(job["cap_s"]))
    torch.set_num_threads(1)
    if job["device"].startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convs
    work = Path(job["work"])
    t0 = time.time()
    try:
        result = run_stacked(job, work) if job["task"] == "stacked" else run_toy(job, work)
        result["status"] = "ok"
    except Exception as e:  # recorded, not fatal: the sweep goes on
        import traceback

        result = {"status": "error", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()[-3000:]}
    result["wall_seconds"] = round(time.time() - t0, 2)
    result["device_name"] = (torch.cuda.get_device_name(0)
                             if job["device"].startswith("cuda") and torch.cuda.is_available() else "cpu")
    tmp = Path(job["result"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=_json_default))
    tmp.replace(job["result"])


# ----------------------------------------------------------------------------- main process


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(o: Any) -> Any:
    """NaN/inf as None so that sweep.json is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    return o


def train_classifiers(args: argparse.Namespace, work: Path, log) -> dict[str, Any]:
    import numpy as np
    import stacked_mnist as sm
    import torch

    from training.data.mnist import load_mnist_arrays

    images, labels, parts = load_mnist_arrays()
    pixels = (images.reshape(len(images), -1).astype(np.float32) / np.float32(127.5) - 1.0).astype(np.float32)
    info: dict[str, Any] = {"mnist_parts": parts}
    for seed in args.seeds:
        clf, ci = sm.train_classifier(pixels, labels, args.classifier_epochs, seed, device=args.device)
        torch.save({k: v.cpu() for k, v in clf.state_dict().items()}, work / f"classifier_s{seed}.pt")
        ds, idx = sm.stacked_dataset(pixels, args.triples, 1000, seed)
        n_ref = min(args.samples, len(ds.train))
        true_ids = 100 * labels[idx[:n_ref, 0]] + 10 * labels[idx[:n_ref, 1]] + labels[idx[:n_ref, 2]]
        ci["reference_true_labels"] = sm.mode_metrics(true_ids)
        ci["reference_classified"] = sm.mode_metrics(sm.mode_ids(clf, ds.train[:n_ref]))
        info[f"seed{seed}"] = ci
        log(f"classifier seed {seed}: held-out accuracy {ci['accuracy_held_out']:.4f} "
            f"({ci['seconds']}s); real triples {ci['reference_classified']['modes_covered']} modes")
    return info


def summarise(results: dict[str, dict[str, Any]], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        r = results.get(job["id"])
        if r is None or r.get("status") != "ok":
            continue
        key = f"{job['task'] if job['task'] == 'stacked' else job['dataset']}/{job['config']}"
        groups.setdefault(key, []).append(r)
    keys = {"stacked": ("modes_covered", "modes_covered_10", "kl_modes_uniform", "steps", "train_seconds"),
            "toy": ("modes_covered", "high_quality_fraction", "kl_modes_uniform", "steps", "train_seconds")}
    out: dict[str, Any] = {}
    for key, rs in groups.items():
        kind = "stacked" if key.startswith("stacked/") else "toy"
        agg: dict[str, Any] = {"n_seeds": len(rs), "all_budget_complete": all(r.get("budget_complete") for r in rs)}
        for k in keys[kind]:
            v = np.array([r[k] for r in rs if r.get(k) is not None], dtype=np.float64)
            if len(v):
                agg[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
                          "values": v.tolist()}
        if kind == "toy" and all("mala_T1" in r for r in rs):
            v = np.array([r["mala_T1"]["high_quality_fraction"] for r in rs])
            agg["mala_T1_high_quality_fraction"] = {"mean": float(v.mean()), "values": v.tolist()}
        hist = [r.get("history") or [] for r in rs]
        if hist and hist[0] and "mi_bound_nats" in hist[0][-1]:
            agg["final_mi_bound_nats"] = float(np.mean([h[-1]["mi_bound_nats"] for h in hist if h]))
            agg["final_encoder_mse"] = float(np.mean([h[-1]["encoder_mse"] for h in hist if h]))
        out[key] = agg
    return out


def plot_curves(path: Path, results: dict[str, dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for job in jobs:
        r = results.get(job["id"])
        if job["task"] != "stacked" or r is None or r.get("status") != "ok" or not r.get("history"):
            continue
        h = r["history"]
        steps = [p["step"] for p in h]
        lbl = f"{job['config']} s{job['seed']} ({r['modes_covered']} modes)"
        if "mi_bound_nats" in h[0]:
            axes[0].plot(steps, [p["mi_bound_nats"] for p in h], lw=1, ms=2, marker=".", label=lbl)
            axes[1].plot(steps, [p["encoder_mse"] for p in h], lw=1, ms=2, marker=".", label=lbl)
        gap = [p.get("energy_gap", -p.get("wasserstein", 0.0)) for p in h]
        axes[2].plot(steps, gap, lw=1, ms=2, marker=".", label=lbl)
    axes[0].set_title("MI lower bound −d/2·log(mse/d) (nats), training batches")
    axes[1].set_title("encoder MSE ‖z − Enc(G(z))‖² (no information: 64)")
    axes[1].axhline(64, color="k", ls=":", lw=0.8)
    axes[2].set_title("mean E(real) − mean E(fake) (symlog)")
    axes[2].set_yscale("symlog")
    for ax in axes:
        ax.set_xlabel("generator step")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=5, ncol=2)
    fig.suptitle("StackedMNIST: MEG's entropy term over training (bench/sweep_gpu.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_samples(path: Path, results: dict[str, dict[str, Any]], jobs: list[dict[str, Any]],
                 grids: dict[str, str]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = [j for j in jobs if j["task"] == "stacked" and j["seed"] == jobs[0]["seed"] and j["id"] in grids]
    if not shown:
        return
    cols = 6
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, job in zip(axes.ravel(), shown, strict=False):
        r = results[job["id"]]
        img = Image.open(io.BytesIO(base64.b64decode(grids[job["id"]])))
        ax.imshow(img)
        ax.set_title(f"{job['config']}: {r['modes_covered']} modes, KL {r['kl_modes_uniform']:.2f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- docs tables

RENDER_BASE = {*STACKED_BASE, f"train.log_every={LOG_EVERY}"}  # shown once, not per row
CURVE_ROUND = "round 3"  # the round plotted in docs/img/stacked_mnist_sweep_{curves,samples}.png
ROUND7_LOG = "bench/results/sweep_gpu_round7.log"  # seeds 3, 4 (its sweep.json was lost)
CPU_RESULTS = "bench/results/stacked_mnist_cpu_*_s*.json"  # bench/stacked_mnist.py --only M --tag cpu_CONFIG


def _pm(agg: dict[str, Any], key: str, fmt: str) -> str:
    """'mean ± std' of one summary entry ('mean' alone for one seed; '' when absent)."""
    v = agg.get(key)
    if not isinstance(v, dict):
        return ""
    m = format(v["mean"], fmt)
    return m if v.get("std") is None else f"{m} ± {format(v['std'], fmt)}"


def _row(round_name: str, job: dict[str, Any], result: dict[str, Any], agg: dict[str, Any],
         seeds: list[Any], modes_each: list[Any]) -> dict[str, Any]:
    """A table row of one config: `job` and `result` are its first finished run's."""
    train = result["settings"]["train"]
    wgan = job["method"] == "wgan_gp"
    return {
        "round": round_name, "config": job["config"], "method": job["method"],
        "overrides": [o for o in job["overrides"] if o not in RENDER_BASE],
        "lr": train["lr"], "entropy_weight": None if wgan else train["entropy_weight"],
        "penalty": job["gp_weight"] if wgan else train["gp_weight"],
        "gp_on": train.get("gp_on", "data"), "entropy_noise": train.get("entropy_noise", 0.0),
        "entropy": train.get("entropy", "encoder"),
        "seeds": seeds, "agg": agg, "modes_each": modes_each,
        "complete": agg.get("all_budget_complete", False), "command": job["bench_command"],
    }


def stacked_rows(sweep: dict[str, Any], round_name: str) -> list[dict[str, Any]]:
    """One row per StackedMNIST config of one sweep.json: method, the overrides beyond the
    sweep's base, learning rate / entropy weight / λ as the runs used them, the summary
    (mean ± std over seeds), the seeds and each seed's modes, the MI bound and encoder MSE
    at the last logged step, and seed 0's exact command."""
    rows: list[dict[str, Any]] = []
    by_config: dict[str, list[dict[str, Any]]] = {}
    for job in sweep["jobs"]:
        if job["task"] == "stacked":
            by_config.setdefault(job["config"], []).append(job)
    for config, jobs in by_config.items():
        agg = sweep["summary"].get(f"stacked/{config}")
        if agg is None:
            continue
        ok = [j for j in jobs if sweep["results"].get(j["id"], {}).get("status") == "ok"]
        rows.append(_row(round_name, ok[0], sweep["results"][ok[0]["id"]], agg, [j["seed"] for j in ok],
                         [sweep["results"][j["id"]]["modes_covered"] for j in ok]))
    return rows


def pooled_rows(sweeps: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per StackedMNIST config with every finished run of it across the rounds
    pooled (a seed rerun in a later round is another run: GPU reruns are not bit-identical),
    as `stacked_rows` rows; `seeds` then lists `rN sS` labels."""
    jobs: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    first: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    rounds: dict[str, list[str]] = {}
    for name, sw in sweeps:
        tag = name.replace("round ", "r")
        for job in sw["jobs"]:
            r = sw["results"].get(job["id"], {})
            if job["task"] != "stacked" or r.get("status") != "ok":
                continue
            key = f"{tag} s{job['seed']}"
            jobs.append({**job, "id": f"{tag}:{job['id']}", "label": key})
            results[f"{tag}:{job['id']}"] = r
            first.setdefault(job["config"], (job, r))
            if tag not in rounds.setdefault(job["config"], []):
                rounds[job["config"]].append(tag)
    aggs = summarise(results, jobs)
    rows = []
    for config, (job, r) in first.items():
        runs = [j for j in jobs if j["config"] == config]
        rows.append(_row(", ".join(rounds[config]), job, r, aggs[f"stacked/{config}"],
                         [j["label"] for j in runs],
                         [f"{j['label']}: {results[j['id']]['modes_covered']}" for j in runs]))
    return rows


def round7_runs(path: Path) -> dict[str, dict[str, Any]]:
    """What round 7's printed log holds per config: each run's modes and KL where its `done`
    line is there, else the `(n=N)` summary's means ({config: {"runs": [(modes, kl)], or
    "n", "modes_mean", "kl_mean"}})."""
    import ast
    import re

    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    text = path.read_text()
    for m in re.finditer(r"done stacked/([^/]+)/s\d+: ok in [\d.]+s (\{.*\})", text):
        d = ast.literal_eval(m.group(2))
        out.setdefault(m.group(1), {"runs": []})["runs"].append(
            (float(d["modes_covered"]), float(d["kl_modes_uniform"])))
    for m in re.finditer(r"stacked/([^ ]+) \(n=(\d+)\): modes_covered ([\d.]+)±[\d.]+, .*"
                         r"kl_modes_uniform ([\d.]+)±", text):
        if m.group(1) not in out:
            out[m.group(1)] = {"n": int(m.group(2)), "modes_mean": float(m.group(3)),
                               "kl_mean": float(m.group(4))}
    return out


def with_extra(row: dict[str, Any], extra: dict[str, dict[str, Any]]) -> tuple[int, float, float]:
    """(runs, mean modes, mean KL) of a pooled row plus round 7's runs of its config."""
    n = len(row["seeds"])
    modes, kl = mean_of(row, "modes_covered") * n, mean_of(row, "kl_modes_uniform") * n
    e = extra.get(row["config"])
    if e is not None and "runs" in e:
        n, modes, kl = n + len(e["runs"]), modes + sum(r[0] for r in e["runs"]), kl + sum(r[1] for r in e["runs"])
    elif e is not None:
        n, modes, kl = n + e["n"], modes + e["n"] * e["modes_mean"], kl + e["n"] * e["kl_mean"]
    return n, modes / n, kl / n


def mean_of(row: dict[str, Any], key: str) -> float:
    return float(row["agg"][key]["mean"])


def not_run(sweep: dict[str, Any]) -> list[str]:
    """Configs of a sweep whose StackedMNIST runs never finished (with the reason)."""
    out = []
    for job in sweep["jobs"]:
        r = sweep["results"].get(job["id"], {})
        if job["task"] == "stacked" and r.get("status") != "ok":
            out.append(f"`{job['config']}`" + (f" s{job['seed']}" if job["seed"] != sweep["args"]["seeds"][0] else ""))
    return out


def _method_label(row: dict[str, Any]) -> str:
    if row["method"] == "wgan_gp":
        return f"WGAN-GP (λ {row['penalty']:g} on interpolates)"
    where = "interpolates" if row.get("gp_on") == "interpolates" else "data"
    noise = f", noise {row['entropy_noise']:g} before the MI term" if row.get("entropy_noise") else ""
    jsd = ", JSD estimator" if row.get("entropy") == "jsd" else ""
    return (f"MEG (entropy weight {row['entropy_weight']:g}{jsd}{noise}, "
            f"λ {row['penalty']:g} on {where})")


def _stacked_table(rows: list[dict[str, Any]], with_curves: bool) -> list[str]:
    head = ["round", "config", "method", "overrides (`--set`)", "lr", "modes covered / 1000",
            "modes ≥ 10 samples", "KL(modes ‖ uniform)", "seeds (modes each)"]
    if with_curves:
        head += ["MI bound at step 2000 (nats)", "encoder MSE at step 2000 (of 64)"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        a = r["agg"]
        cells = [r["round"], f"`{r['config']}`", _method_label(r),
                 " ".join(f"`{o}`" for o in r["overrides"]) or "(base)", f"{r['lr']:g}",
                 _pm(a, "modes_covered", ".0f"), _pm(a, "modes_covered_10", ".0f"),
                 _pm(a, "kl_modes_uniform", ".3f"),
                 f"{len(r['seeds'])} ({', '.join(str(m) for m in r['modes_each'])})"
                 + ("" if r["complete"] else ", budget not reached")]
        if with_curves:
            mi, mse = a.get("final_mi_bound_nats"), a.get("final_encoder_mse")
            cells += ["—" if mi is None else f"{mi:.1f}", "—" if mse is None else f"{mse:.1f}"]
        md.append("| " + " | ".join(cells) + " |")
    return md


def cpu_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """The equal-CPU-budget runs (bench/stacked_mnist.py --only M --tag cpu_CONFIG, one JSON
    per seed), grouped by tag: modes, KL, training wall and CPU time per model."""
    import numpy as np

    groups: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(paths):
        d = json.loads(path.read_text())
        groups.setdefault(d["args"]["tag"], []).append(d)
    rows = []
    for tag, runs in groups.items():
        runs.sort(key=lambda d: d["args"]["seed"])
        method = runs[0]["args"]["only"]
        res = [d["results"][method] for d in runs]

        def stat(key: str, res: list[dict[str, Any]] = res) -> dict[str, Any]:
            v = np.array([r[key] for r in res], dtype=np.float64)
            return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None}

        rows.append({
            "config": tag.removeprefix("cpu_"), "method": method, "seeds": [d["args"]["seed"] for d in runs],
            "modes_each": [r["modes_covered"] for r in res], "kl_each": [r["kl_modes_uniform"] for r in res],
            "agg": {k: stat(k) for k in ("modes_covered", "modes_covered_10", "kl_modes_uniform")},
            "train_min": [r["train_seconds"] / 60 for r in res],
            "train_cpu_min": [r["train_cpu_seconds"] / 60 for r in res],
            "run_cpu_min": [d["cpu_seconds"] / 60 for d in runs],
            "steps": [r["steps"] for r in res], "command": runs[0]["command"],
            "machine": runs[0]["machine"], "load_end": [d.get("load_average_end") for d in runs],
            "dates": [d["machine"]["date"] for d in runs],
            "settings": runs[0]["settings"]["train"], "gp_weight": runs[0]["args"]["gp_weight"],
        })
    return rows


def _steps_of(row: dict[str, Any]) -> str:
    return ", ".join(str(n) for n in sorted(set(row["steps"])))


def _modes_kl(row: dict[str, Any]) -> str:
    return (f"{_pm(row['agg'], 'modes_covered', '.0f')} modes, KL "
            f"{_pm(row['agg'], 'kl_modes_uniform', '.3f')}")


def _cpu_method(row: dict[str, Any]) -> str:
    if row["method"] == "wgan_gp":
        return f"WGAN-GP (λ {row['gp_weight']:g})"
    t = row["settings"]
    jsd = ", JSD estimator" if t.get("entropy") == "jsd" else ""
    return (f"MEG (entropy weight {t['entropy_weight']:g}{jsd}, λ {t['gp_weight']:g} "
            f"on {t.get('gp_on', 'data')})")


def cpu_verdicts(cpu: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The goal at an equal CPU budget, per WGAN-GP row: the MEG rows with the same lr and
    steps, each marked ahead (more modes and a lower KL) and, when also ≥ 950, a winner."""
    out = []
    for w in [r for r in cpu if r["method"] == "wgan_gp"]:
        key = (w["settings"]["lr"], _steps_of(w))
        megs = sorted((m for m in cpu if m["method"] == "meg" and (m["settings"]["lr"], _steps_of(m)) == key),
                      key=lambda m: -mean_of(m, "modes_covered"))
        if not megs:
            continue
        wm, wk = mean_of(w, "modes_covered"), mean_of(w, "kl_modes_uniform")
        marks = [(m, mean_of(m, "modes_covered") > wm, mean_of(m, "kl_modes_uniform") < wk) for m in megs]
        winners = [m for m, more, lower in marks
                   if more and lower and mean_of(m, "modes_covered") >= 950 and not _control(m)]
        best = next((m for m in megs if not _control(m)), None)  # MEG's own, by modes
        out.append({"wgan": w, "lr": key[0], "steps": key[1], "megs": marks, "winners": winners, "best": best,
                    "within_spread": [m["config"] for m in winners
                                      if not (_beyond_spread(m, w) or _paired_lead(m, w))]})
    return out


def _control(row: dict[str, Any]) -> bool:
    """A MEG row with its entropy term off (weight 0): an energy model trained against its
    generator, a control for MEG and never MEG's own result."""
    return row["method"] == "meg" and float(row["settings"].get("entropy_weight", 1.0)) == 0.0


def _beyond_spread(meg: dict[str, Any], wgan: dict[str, Any]) -> bool:
    """MEG's lead on both modes and KL is larger than the larger seed std of either side
    (one-seed rows have no spread: never beyond it)."""
    for key, sign in (("modes_covered", 1.0), ("kl_modes_uniform", -1.0)):
        spreads = [r["agg"][key].get("std") for r in (meg, wgan)]
        if any(sd is None for sd in spreads):
            return False
        if sign * (mean_of(meg, key) - mean_of(wgan, key)) <= max(spreads):
            return False
    return True


def cpu_headline(cpu: list[dict[str, Any]]) -> str:
    """The CPU goal in one statement: the winning MEG rows, or the closest one."""
    verdicts = cpu_verdicts(cpu)
    won = [(v, m) for v in verdicts for m in v["winners"]]
    pairs = won or [(v, v["best"]) for v in verdicts if v["best"]]
    noisy = [c for v in verdicts for c in v["within_spread"]]
    state = ("not met" if not won else f"met on the means only, {UNCLEAR}"
             if len(noisy) == len(won) else "met")
    head = f"**Goal at an equal CPU budget (this repo's 2-core machine, ≤ 15 CPU-min a model): {state}.**"
    if not pairs:
        return head + " No MEG row (entropy term on) shares a WGAN-GP row's lr and steps."
    said = "; ".join(
        f"{_cpu_method(m)} at lr {v['lr']:g}, {v['steps']} steps (`{m['config']}`): "
        f"{_modes_kl(m)} over {len(m['seeds'])} seeds, against WGAN-GP's {_pm(v['wgan']['agg'], 'modes_covered', '.0f')}, "
        f"KL {_pm(v['wgan']['agg'], 'kl_modes_uniform', '.3f')} over {len(v['wgan']['seeds'])} seeds"
        for v, m in pairs)
    paired = [p for p in (_paired(m, v["wgan"]) for v, m in pairs) if p]
    lost = [(v, v["best"]) for v in verdicts if not v["winners"] and v["best"]] if won else []
    return (head + (" " if won else " Closest, by modes: ") + said + " (the CPU table below)."
            + "".join(" " + p for p in paired)
            + "".join(f" Not met at lr {v['lr']:g}, {v['steps']} steps: MEG's best (`{best['config']}`) "
                      f"{_modes_kl(best)}, against WGAN-GP's {_pm(v['wgan']['agg'], 'modes_covered', '.0f')}, "
                      f"KL {_pm(v['wgan']['agg'], 'kl_modes_uniform', '.3f')}." for v, best in lost))


UNCLEAR = "by less than the seed spread, and the seed-by-seed 95% interval includes no difference"


def paired_diffs(meg: dict[str, Any], wgan: dict[str, Any]) -> dict[str, Any] | None:
    """MEG minus WGAN-GP seed by seed (a seed fixes the classifier and the training triples),
    on the seeds both rows ran, with each mean difference and its 95% t-interval; None
    under two common seeds."""
    common = [s for s in meg["seeds"] if s in wgan["seeds"]]
    if len(common) < 2 or "kl_each" not in meg or "kl_each" not in wgan:
        return None
    mi, wi = ({s: i for i, s in enumerate(r["seeds"])} for r in (meg, wgan))
    modes = [meg["modes_each"][mi[s]] - wgan["modes_each"][wi[s]] for s in common]
    kls = [meg["kl_each"][mi[s]] - wgan["kl_each"][wi[s]] for s in common]
    return {"seeds": common, "modes": modes, "kl": kls,
            "modes_ci": t_interval(modes), "kl_ci": t_interval(kls)}


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided t-interval of the mean of `values` (n ≥ 2)."""
    import numpy as np
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half


def _paired_lead(meg: dict[str, Any], wgan: dict[str, Any]) -> bool:
    """MEG ahead seed by seed: over ≥ 3 common seeds, the 95% interval of the mean difference
    lies above 0 in modes and below 0 in KL."""
    p = paired_diffs(meg, wgan)
    return p is not None and len(p["seeds"]) >= 3 and p["modes_ci"][1] > 0 and p["kl_ci"][2] < 0


def _paired(meg: dict[str, Any], wgan: dict[str, Any], other: str = "WGAN-GP") -> str:
    """paired_diffs in words (`other` names the row subtracted); empty where the rows share
    under two seeds."""
    p = paired_diffs(meg, wgan)
    if p is None:
        return ""
    (mm, ml, mh), (km, kl, kh) = p["modes_ci"], p["kl_ci"]
    return (f"Seed by seed (`{meg['config']}` minus {other}; a seed fixes the classifier and the "
            f"training triples): {', '.join(f'{d:+d}' for d in p['modes'])} modes, "
            f"{', '.join(f'{d:+.3f}' for d in p['kl'])} KL; mean {mm:+.1f} modes (95% interval "
            f"{ml:+.1f} to {mh:+.1f}), {km:+.3f} KL ({kl:+.3f} to {kh:+.3f}) over {len(p['seeds'])} seeds.")


def cpu_goal(cpu: list[dict[str, Any]]) -> list[str]:
    """One paragraph per WGAN-GP row of the equal-CPU-budget runs (cpu_verdicts), every MEG
    row at its lr and steps beside it."""
    md: list[str] = []
    for v in cpu_verdicts(cpu):
        w, parts = v["wgan"], []
        for m, more, lower in v["megs"]:
            verdict = (("ahead on both counts" + ("" if mean_of(m, "modes_covered") >= 950 else ", below 950"))
                       if more and lower else f"{'more' if more else 'fewer'} modes, {'lower' if lower else 'higher'} KL")
            if _control(m):
                verdict = "control: entropy term off, not MEG"
            parts.append(f"`{m['config']}` {_modes_kl(m)} ({len(m['seeds'])} seed(s); {verdict})")
        clear = ", ".join(f"`{m['config']}`" for m in v["winners"] if m["config"] not in v["within_spread"])
        noisy = ", ".join(f"`{c}`" for c in v["within_spread"])
        state = (f"met by {clear}.**" + (f" {noisy}: on the means only, {UNCLEAR}." if noisy else "") if clear
                 else f"met on the means only, by {noisy}.** That is {UNCLEAR}." if noisy else "not met.**")
        md += ["", f"**lr {v['lr']:g}, {v['steps']} steps: the goal is " + state
               + f" WGAN-GP (`{w['config']}`) {_modes_kl(w)} ({len(w['seeds'])} seed(s)); MEG: "
               + "; ".join(parts) + "."]
        for said in _entropy_effects([m for m, _, _ in v["megs"]]):
            md += ["", f"What MEG's entropy term adds here: {said}"]
    return md


def _entropy_effects(megs: list[dict[str, Any]]) -> list[str]:
    """Each MEG row beside its weight-0 control (the same settings but the entropy weight),
    seed by seed."""
    def rest(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row["settings"].items() if k != "entropy_weight"}

    out = []
    for c in (c for c in megs if _control(c)):
        for m in (m for m in megs if not _control(m) and rest(m) == rest(c)):
            said = _paired(m, c, f"the control `{c['config']}`")
            if said:
                out.append(said)
    return out


def weight_sweep(rows: list[dict[str, Any]]) -> dict[tuple[str, float, float], list[tuple[float, str]]]:
    """MEG rows (encoder estimator) that differ only in entropy weight, lr and the penalty
    (where, λ): {(where, λ, lr): [(weight, 'modes ± std (n runs)')]}, the row with the most
    runs for each (where, λ, lr, weight)."""
    allowed = {"train.entropy_weight", "train.lr", "train.gp_on", "train.gp_weight"}
    best: dict[tuple[str, float, float, float], dict[str, Any]] = {}
    for r in rows:
        keys = {o.split("=", 1)[0] for o in r["overrides"]}
        if r["method"] != "meg" or not keys <= allowed:
            continue
        k = (r.get("gp_on", "data"), r["penalty"], r["lr"], r["entropy_weight"])
        if k not in best or len(r["seeds"]) >= len(best[k]["seeds"]):
            best[k] = r
    out: dict[tuple[str, float, float], list[tuple[float, str]]] = {}
    for (where, lam, lr, w), r in sorted(best.items()):
        n = len(r["seeds"])
        out.setdefault((where, lam, lr), []).append(
            (w, f"{_pm(r['agg'], 'modes_covered', '.0f')} modes, KL {_pm(r['agg'], 'kl_modes_uniform', '.2f')} "
                f"({n} run{'s' * (n > 1)})"))
    return out


def render_stacked(sweeps: list[tuple[str, dict[str, Any]]], cpu: list[dict[str, Any]],
                   old_cpu: dict[str, Any] | None,
                   extra: dict[str, dict[str, Any]] | None = None) -> str:
    """The StackedMNIST section of docs/benchmarks.md from the sweeps' JSON (named rounds)
    and the equal-CPU-budget runs: the 3-seed equal-budget table, every ablation row, the
    runs that never ran, the CPU table, the MI-bound curve and the goal, stated as measured."""
    rows = [r for name, sw in sweeps for r in stacked_rows(sw, name)]
    seeded = [r for r in rows if len(r["seeds"]) >= 3]
    pooled = pooled_rows(sweeps)
    multi = [r for r in pooled if len(r["seeds"]) >= 3]
    multi.sort(key=lambda r: (r["lr"], r["method"] != "wgan_gp", r["gp_on"] != "data",
                              -(r["entropy_weight"] or 0)))
    m0 = sweeps[0][1]["machine"]
    clf = sweeps[0][1].get("classifiers", {}).get("seed0", {})
    ref = clf.get("reference_classified", {})

    def brief(r: dict[str, Any]) -> str:
        return (f"`{r['config']}` {_pm(r['agg'], 'modes_covered', '.0f')} modes, KL "
                f"{_pm(r['agg'], 'kl_modes_uniform', '.3f')} ({len(r['seeds'])} run{'s' * (len(r['seeds']) > 1)})")

    # The goal, from the pooled rows with ≥ 3 runs: MEG with its entropy term (weight > 0)
    # against WGAN-GP at the same learning rate, round 7's logged runs included.
    extra = extra or {}
    lines = []
    megs = [r for r in multi if r["method"] == "meg" and (r["entropy_weight"] or 0) > 0]
    best_meg = max(megs, key=lambda r: mean_of(r, "modes_covered"), default=None)
    if best_meg is not None:
        wg = [r for r in multi if r["method"] == "wgan_gp" and r["lr"] == best_meg["lr"]]
        if wg:
            w = wg[0]
            (mn, mm, mk), (wn, wm, wk) = with_extra(best_meg, extra), with_extra(w, extra)
            met = mm > wm and mk < wk and mm >= 950
            r7 = " (round 7's logged seeds 3 and 4 included)" if best_meg["config"] in extra else ""
            lines.append(
                f"**Goal (issue 13: MEG covers more modes than WGAN-GP with lower KL, and ≥ 950/1000, "
                f"at equal budget): {'met' if met else 'not met'} on the GPU.** MEG's best config with "
                f"its entropy term and ≥ 3 runs, {_method_label(best_meg)} at lr {best_meg['lr']:g} "
                f"(`{best_meg['config']}`), covers {mm:.1f} modes on average with KL {mk:.3f} over "
                f"{mn} runs{r7}; WGAN-GP at the same lr and budget (`{w['config']}`) {wm:.1f} modes, "
                f"KL {wk:.3f} over {wn} runs. "
                + ("Level on modes, " if abs(mm - wm) < 5 else "")
                + ("MEG's KL is higher." if mk >= wk else "MEG's KL is lower.")
                + f" Without round 7: {brief(best_meg)} against {brief(w)}.")
    if cpu:
        lines.append(cpu_headline(cpu))
    if best_meg is not None:
        data_megs = [r for r in megs if r["gp_on"] == "data" and r["lr"] == best_meg["lr"]
                     and r["entropy"] == best_meg["entropy"]
                     and r["entropy_weight"] == best_meg["entropy_weight"]]
        if best_meg["gp_on"] == "interpolates" and data_megs:
            d = max(data_megs, key=lambda r: (r["penalty"] == best_meg["penalty"], mean_of(r, "modes_covered")))
            lines.append(
                f"Where the penalty is taken closed most of what the learning rate left: the same "
                f"zero-centred penalty (λ {best_meg['penalty']:g}, weight {best_meg['entropy_weight']:g}) on "
                f"random points between data and samples (0-GP, Thanh-Tung et al. 2019) instead of on "
                f"data only (the paper's) takes MEG from {brief(d)} to {brief(best_meg)}.")
        offs = [r for r in multi if r["method"] == "meg" and r["entropy_weight"] == 0]
        if offs:
            lines.append(
                "The entropy term is not what makes the difference: with it off (weight 0, an energy "
                "model trained against its generator, not MEG) the same penalties give "
                + "; ".join(f"{brief(r)} ({r['gp_on']}, λ {r['penalty']:g})" for r in offs) + ".")
        noisy = [r for r in pooled if r["method"] == "meg" and r["entropy_noise"] > 0]
        plain = {(r["gp_on"], r["penalty"], r["lr"], r["entropy_weight"], r["entropy"]): r for r in pooled
                 if r["method"] == "meg" and r["entropy_noise"] == 0
                 and {o.split("=", 1)[0] for o in r["overrides"]} <= {
                     "train.entropy_weight", "train.lr", "train.gp_on", "train.gp_weight", "train.entropy"}}
        pairs = [(r, plain.get((r["gp_on"], r["penalty"], r["lr"], r["entropy_weight"], r["entropy"])))
                 for r in noisy]
        if pairs:
            lines.append(
                "Noise on G(z) before the MI estimator reads it (`train.entropy_noise`: does the "
                "information about z hide in pixel changes too small to change the digit?) did not "
                "help: " + "; ".join(f"{brief(r)} against {brief(b) if b else 'no noiseless row'}"
                                     for r, b in pairs) + ".")
        lines += ["", "Modes covered by entropy weight, everything else fixed (encoder estimator; "
                  "every GPU run of a config pooled, the config with the most runs for each weight):", ""]
        lines += [f"- penalty on {where}, λ {lam:g}, lr {lr:g}: " + "; ".join(f"weight {w:g}: {m}" for w, m in ws)
                  for (where, lam, lr), ws in weight_sweep(pooled).items()]
        lr_rows = [x for x in seeded if x["method"] == "meg" and x["entropy_weight"] == 0.1
                   and all(o.split("=")[0] in ("train.entropy_weight", "train.lr") for o in x["overrides"])]
        lines += ["", "With the penalty on data, or on interpolates at λ 100, the modes fall as the "
                  "weight grows past 0.01 to 0.03; on interpolates at λ 10 they stay level from weight 0 "
                  "to 0.1 and only the KL moves (the list above). The "
                  "learning rate closed the first part of the gap to WGAN-GP: MEG at weight 0.1 covers "
                  + ", ".join(f"{_pm(x['agg'], 'modes_covered', '.0f')} (lr {x['lr']:g})" for x in lr_rows)
                  + " modes, and WGAN-GP gains from a larger lr too. The paper's own budget (larger nets, "
                  "more steps) was not run."]
    spaced: list[str] = []  # a paragraph per statement; list items stay together
    for line in lines:
        if spaced and spaced[-1] and line and not (line.startswith("- ") and spaced[-1].startswith("- ")):
            spaced.append("")
        spaced.append(line)
    md = ["## StackedMNIST mode counting (`bench/stacked_mnist.py`, `bench/sweep_gpu.py`)", "", *spaced, ""]
    md += [
        f"GPU machine: {m0['gpu']}, {m0['cpu_count']} CPU cores; Python {m0['python']}, "
        f"torch {m0['torch']}; " + ", ".join(f"{n} {sw['machine']['date']}" for n, sw in sweeps)
        + ". Each StackedMNIST run is its own process (one CPU thread) sharing the GPU with up to "
        f"{max(sw['gpu_workers'] for _, sw in sweeps) - 1} others; "
        "wall times are therefore not per-model costs.", "",
        "Commands (`--out` a directory; each run's single-process equivalent is its "
        "`bench_command` in the JSON, e.g. `" + (seeded[0]["command"] if seeded else "") + "`):", "",
    ]
    for name, sw in sweeps:
        md.append(f"- {name} ({sw['wall_seconds'] / 60:.1f} min): `{sw['command']}` → "
                  f"`bench/results/sweep_gpu_{name.replace(' ', '')}.json`")
    md += [
        "- this section: `python3 bench/sweep_gpu.py --render bench/results/sweep_gpu_round*.json`",
        "",
        f"Setup (every row): {sweeps[0][1]['args']['triples']:,} random triples of the 10k MNIST t10k "
        "images as RGB channels, pixels in [-1, 1]; a small CNN classifier per seed "
        f"(held-out accuracy {100 * clf.get('accuracy_held_out', float('nan')):.2f}% at seed 0; real "
        f"triples: {ref.get('modes_covered', '?')} modes, KL {ref.get('kl_modes_uniform', float('nan')):.3f}); "
        "conv generator z 64 → 2·16·7·7 → ConvT 16 → ConvT 3, tanh; energy / critic Conv 16 → Conv 32 "
        "→ 128 → 1; MEG's encoder the same trunk. Both methods: 2000 generator steps, n_critic 5, "
        "batch 64, Adam betas (0.5, 0.9), linear schedule from the lr shown; MEG: zero-centred "
        "penalty on data (λ 100) unless the overrides say otherwise (`train.gp_on=interpolates`: on "
        "random points between data and samples), MI term `encoder`; WGAN-GP "
        f"(`bench/wgan_gp.py`): one-centred penalty on interpolates. {sweeps[0][1]['args']['samples']:,} "
        "samples per model; modes covered = mode ids with ≥ 1 sample (VEEGAN/PacGAN's count). Base "
        "overrides of every row: " + " ".join(f"`{o}`" for o in sorted(RENDER_BASE)) + ".",
        "",
        "### Equal budget on the GPU: every config with ≥ 3 runs, all its runs pooled",
        "",
        "Mean ± std over the runs (`rN sS`: round N, seed S; a seed rerun in a later round "
        "counts as another run, since GPU reruns differ).",
        "",
        *_stacked_table(multi, with_curves=False),
        "",
        "### Every ablation row (GPU; one seed unless stated)",
        "",
        "Rows in the order measured (round 1: one-factor changes around the docs' config at lr 2e-4; "
        "round 2: learning rates, after lr 5e-4 was round 1's best change; round 3: 3 seeds of the "
        "lr 1e-3 rows; round 4: one-factor changes at lr 1e-3 (where the penalty is taken, noise "
        "before the MI term, the estimator, n_critic, λ, schedule); round 5: seeds 1 and 2 of "
        "round 4's best rows and of WGAN-GP; round 6: the entropy weight at the interpolate "
        "penalty). A config measured in two rounds has a row in each.",
        "",
        *_stacked_table(sorted(rows, key=lambda r: (r["round"], -mean_of(r, "modes_covered"))), with_curves=True),
        "",
    ]
    if extra:
        md += ["Round 7 ran seeds 3 and 4 of `meg_lr1e-3_interp_gp10_w0.03` and `wgan_gp_lr1e-3` beside "
               "round 6; its sweep.json did not come back from the GPU machine (the transfer's "
               f"file-count limit), so it is in no table: its printed log is `{ROUND7_LOG}`. It gave MEG "
               "996 and 960 modes (KL 0.323, 0.516) and WGAN-GP 986.5 ± 18 modes, KL 0.35 ± 0.12 (the "
               "log prints WGAN-GP's mean only), in line with the pooled rows above.", ""]
    skipped = [f"{name}: " + ", ".join(nr) for name, sw in sweeps if (nr := not_run(sw))]
    if skipped:
        md += ["Planned but never started (the sweep's time ran out first), so what they would show "
               "is unknown: " + "; ".join(skipped) + ".", ""]
    # the same config and seed in two rounds: how far apart GPU reruns land
    seen: dict[tuple[str, int], list[int]] = {}
    for _, sw in sweeps:
        for job in sw["jobs"]:
            r = sw["results"].get(job["id"], {})
            if job["task"] == "stacked" and r.get("status") == "ok":
                seen.setdefault((job["config"], job["seed"]), []).append(r["modes_covered"])
    dup = [f"`{c}` s{s}: {' vs '.join(map(str, v))}" for (c, s), v in seen.items() if len(v) > 1]
    if dup:
        md += ["The same config and seed rerun in another round is not bit-identical on the GPU "
               "(cuDNN picks its algorithms per run): " + "; ".join(dup) + " modes; one-seed "
               "differences of that size are noise.", ""]
    if cpu:
        c0 = cpu[0]["machine"]
        md += ["### Equal CPU budget (this repo's 2-core machine)", "",
               f"Machine: {c0['cpu']} ({c0['cpu_count']} cores), no GPU; torch {c0['torch']}; "
               f"runs started {min(d for r in cpu for d in r['dates'])} to {max(d for r in cpu for d in r['dates'])}. "
               "One torch thread per run, `OMP_NUM_THREADS=1`, two runs at a time on the 2 cores "
               "(shared with other jobs). The issue's budget is ≤ 15 CPU-minutes a model; 2000 steps as "
               "on the GPU unless the steps column says more (a longer run within the same budget). "
               "Commands (the seed by `--seed`; run with `OMP_NUM_THREADS=1`):", ""]
        for r in cpu:
            md.append(f"- `{r['config']}`: `{r['command']}`")
        if any(r["command"].count("--steps ") > 1 for r in cpu):
            md += ["", "Where a command gives `--steps` twice, the last one counts (argparse's rule); "
                   "the steps column is what trained."]
        head = ["config", "method", "lr", "steps", "modes covered / 1000", "modes ≥ 10 samples",
                "KL(modes ‖ uniform)", "seeds (modes each)", "training wall min / model",
                "training CPU min / model", "whole run CPU min (classifier, data, sampling too)"]
        md += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in cpu:
            md.append("| " + " | ".join([
                f"`{r['config']}`", _cpu_method(r), f"{r['settings']['lr']:g}", _steps_of(r),
                _pm(r["agg"], "modes_covered", ".0f"), _pm(r["agg"], "modes_covered_10", ".0f"),
                _pm(r["agg"], "kl_modes_uniform", ".3f"),
                f"{len(r['seeds'])} ({', '.join(map(str, r['modes_each']))})",
                ", ".join(f"{m:.1f}" for m in r["train_min"]),
                ", ".join(f"{m:.1f}" for m in r["train_cpu_min"]),
                ", ".join(f"{m:.1f}" for m in r["run_cpu_min"])]) + " |")
        worst = max(m for r in cpu for m in r["train_cpu_min"])
        md += ["", f"Every model trained in ≤ {worst:.1f} CPU-minutes "
               f"({'within' if worst <= 15 else 'over'} the issue's 15); wall time is higher because the "
               "2 cores were shared with other jobs."]
        md += cpu_goal(cpu)
        md.append("")
    if old_cpu is not None:
        res, t = old_cpu["results"], old_cpu["settings"]["train"]
        md += [f"The last run of both models in one CPU process (`{old_cpu['command']}`, "
               f"{old_cpu['machine']['date']}; lr {t['lr']:g}, entropy weight {t['entropy_weight']:g}): "
               f"MEG {res['meg']['modes_covered']}, WGAN-GP {res['wgan_gp']['modes_covered']} modes, "
               f"one seed (`bench/results/stacked_mnist.json`). `bench/stacked_mnist.py`'s default lr "
               "is now 1e-3 (it was 2e-4).", ""]
    # The MI curve: from the last round with MEG rows both with and without the entropy term.
    name, sw = next(((n, x) for n, x in sweeps if n == CURVE_ROUND), sweeps[-1])
    curves = {}
    for r in stacked_rows(sw, name):
        if r["method"] != "meg":
            continue
        hs = [sw["results"][f"stacked/{r['config']}/s{s}"]["history"] for s in r["seeds"]]
        curves[r["config"]] = (r["entropy_weight"], [h[0] for h in hs], [h[-1] for h in hs])
    desc = []
    for config, (w, firsts, lasts) in curves.items():
        f_mi = sum(h["mi_bound_nats"] for h in firsts) / len(firsts)
        l_mi = sum(h["mi_bound_nats"] for h in lasts) / len(lasts)
        f_mse = sum(h["encoder_mse"] for h in firsts) / len(firsts)
        l_mse = sum(h["encoder_mse"] for h in lasts) / len(lasts)
        desc.append(f"with weight {w:g} (`{config}`): MI bound {f_mi:.1f} → {l_mi:.1f} nats, "
                    f"encoder MSE {f_mse:.1f} → {l_mse:.1f} from step {firsts[0]['step']} to "
                    f"{lasts[0]['step']} (mean of {len(lasts)} seeds)")
    md += ["### MEG's entropy term over training", "",
           f"![MI bound, encoder MSE and energy gap over training, {name}](img/stacked_mnist_sweep_curves.png)",
           "",
           "The entropy term works as designed on images: with it on, the MI lower bound "
           "−d/2·log(MSE/d) on training batches rises steadily and the encoder recovers z from G(z) "
           "(MSE far below 64 = E‖z‖², the no-information value); with it off the encoder learns "
           "nothing: " + "; ".join(desc) + ". At a fixed lr, a larger weight drives the bound higher and "
           "(broadly) covers fewer modes (the ablation table's last columns): more information about "
           "z in G(z) does not buy coverage of the 1,000 classes here.", "",
           f"![samples of seed 0, {name}](img/stacked_mnist_sweep_samples.png)", ""]
    return "\n".join(md)


def render_toys(name: str, sweep: dict[str, Any]) -> str:
    """The toys' rows of a sweep (MEG and WGAN-GP on the 2-D toys, CPU processes), as a
    short table for the toys section."""
    md = [f"### 2-D toys in the GPU sweep ({name}, CPU cores of the GPU machine, 1 thread each)", "",
          f"`{sweep['command']}` ({sweep['machine']['date']}; {sweep['machine']['cpu_count']} CPU cores, "
          f"torch {sweep['machine']['torch']}). Each toy's recipe with the overrides shown; WGAN-GP as in the "
          "table above (λ 0.1). The sweep's time ran out before all three seeds: the seeds column says "
          "how many ran. Scored as above (2500 samples).", "",
          "| toy | method | overrides (`--set`) | modes covered | high quality % | + latent MALA T=1, HQ % | "
          "KL(modes ‖ uniform) | seeds | steps |", "|---|---|---|---|---|---|---|---|---|"]
    for job_key, agg in sweep["summary"].items():
        if job_key.startswith("stacked/"):
            continue
        toy, config = job_key.split("/", 1)
        job = next(j for j in sweep["jobs"] if j.get("dataset") == toy and j["config"] == config)
        hq = agg["high_quality_fraction"]
        hq_s = f"{100 * hq['mean']:.1f}" + ("" if hq.get("std") is None else f" ± {100 * hq['std']:.1f}")
        mala = agg.get("mala_T1_high_quality_fraction")
        steps = agg["steps"]["values"]
        md.append("| " + " | ".join([
            toy, "MEG: samples of G" if job["method"] == "meg" else "WGAN-GP",
            " ".join(f"`{o}`" for o in job["overrides"]) or "(recipe)",
            f"{_pm(agg, 'modes_covered', '.0f')} / {25 if toy == '25gaussians' else 8}", hq_s,
            "" if mala is None else f"{100 * mala['mean']:.1f}", _pm(agg, "kl_modes_uniform", ".3f"),
            str(agg["n_seeds"]),
            ", ".join(f"{s:.0f}" for s in steps) + ("" if agg["all_budget_complete"] else " (stopped at its cap)"),
        ]) + " |")
    parts = []
    for toy in TOYS:
        meg, wg = sweep["summary"].get(f"{toy}/meg_proposed"), sweep["summary"].get(f"{toy}/wgan_gp")
        if meg and wg:
            mala = meg.get("mala_T1_high_quality_fraction", {}).get("mean")
            parts.append(f"{toy} MEG's G {100 * meg['high_quality_fraction']['mean']:.1f}% "
                         + (f"(+ MALA {100 * mala:.1f}%) " if mala is not None else "")
                         + f"against WGAN-GP {100 * wg['high_quality_fraction']['mean']:.1f}%")
    if parts:
        md += ["", "The issue's toy goal (≥ 95% high quality with all modes, MEG level with or ahead of "
               "WGAN-GP, 3 seeds) is not shown by this sweep either: too few seeds, and " + "; ".join(parts)
               + ". All modes are covered in every run."]
    return "\n".join(md)


def render_main(paths: list[Path], cpu_glob: str, write: bool) -> str:
    """`--render`: the StackedMNIST section (and the toys' sweep table) of docs/benchmarks.md
    from sweep JSONs named `..._roundN.json`, the CPU runs and the old CPU result."""
    from common import RESULTS, write_section

    sweeps = []
    for path in sorted(paths):
        stem = path.stem
        name = "round " + stem.rsplit("round", 1)[1] if "round" in stem else stem
        sweeps.append((name, json.loads(path.read_text())))
    cpu = cpu_rows(sorted(ROOT.glob(cpu_glob)))
    old = RESULTS / "stacked_mnist.json"
    stacked = render_stacked(sweeps, cpu, json.loads(old.read_text()) if old.is_file() else None,
                             round7_runs(ROOT / ROUND7_LOG))
    toy_sweeps = [(n, sw) for n, sw in sweeps if any(k.split("/")[0] in TOYS for k in sw["summary"])]
    toys = "\n\n".join(render_toys(n, sw) for n, sw in toy_sweeps)
    if write:
        write_section("stacked_mnist", stacked)
        if toys:
            write_section("toys-gpu-sweep", toys)
    return stacked + "\n\n" + toys



def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, bounded by a cgroup quota (a container's
    os.cpu_count() is the host's)."""
    from meg.threads import detect_cpus

    info = detect_cpus()
    n = info.affinity or info.cpu_count or 1
    if info.quota is not None:
        n = min(n, max(1, math.floor(info.quota)))
    return max(1, n)


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(), "cuda_available": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="result directory (sweep.json, two PNGs, a log)")
    p.add_argument("--steps", type=int, default=2000, help="StackedMNIST generator steps (every model)")
    p.add_argument("--toy-steps", type=int, default=0, help="toy steps (0: each recipe's)")
    p.add_argument("--toy-mala-steps", type=int, default=300, help="latent MALA steps at T=1 on MEG toys")
    p.add_argument("--device", default="auto", help="StackedMNIST device: auto | cuda | cpu")
    p.add_argument("--gpu-workers", type=int, default=10, help="StackedMNIST processes at once")
    p.add_argument("--cpu-workers", type=int, default=0,
                   help="toy processes at once (0: the CPUs left after the GPU workers, minus one)")
    p.add_argument("--stacked-cap-s", type=float, default=240.0, help="hard cap of one StackedMNIST run")
    p.add_argument("--toy-cap-s", type=float, default=300.0, help="hard cap of one toy run")
    p.add_argument("--total-minutes", type=float, default=6.5, help="the whole sweep ends by then")
    p.add_argument("--triples", type=int, default=30000)
    p.add_argument("--samples", type=int, default=26000)
    p.add_argument("--classifier-epochs", type=int, default=4)
    p.add_argument("--only", default="stacked,toys", help="stacked, toys or both")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds of the seeded rows")
    p.add_argument("--configs", default="", help="comma-separated config names: run only these")
    p.add_argument("--seeded", default="", help="comma-separated StackedMNIST configs run with "
                   "every seed (default: meg_proposed, wgan_gp, meg_docs; none: no config)")
    p.add_argument("--adaptive", type=int, default=-1,
                   help="also run seeds 1, 2 of this many best one-seed MEG ablations (time "
                   "allowing; default 2, or 0 with --configs)")
    p.add_argument("--smoke", action="store_true",
                   help="every job at tiny sizes (steps 20, 3k triples, 2k samples): a plumbing test")
    p.add_argument("--list", action="store_true", help="print the jobs and exit")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--render", type=Path, nargs="+", metavar="SWEEP_JSON",
                   help="write docs/benchmarks.md's StackedMNIST section (and the toys' sweep table) "
                   "from these sweep results (bench/results/sweep_gpu_round*.json) and the CPU runs")
    p.add_argument("--cpu-results", default=CPU_RESULTS, help="glob of the equal-CPU-budget runs (--render)")
    p.add_argument("--dry-run", action="store_true", help="--render: print, do not write the docs")
    args = p.parse_args()
    if args.render:
        print(render_main(args.render, args.cpu_results, write=not args.dry_run))
        return
    if args.worker is not None:
        worker_main(args.worker)
        return
    args.seeds = [int(x) for x in str(args.seeds).split(",") if x != ""]
    if args.smoke:
        args.steps = min(args.steps, 20)
        args.toy_steps = args.toy_steps or 20
        args.toy_mala_steps = min(args.toy_mala_steps, 10)
        args.triples, args.samples, args.classifier_epochs = 3000, 2000, 1
    # First guesses of a run's duration (s) on the GPU machine, before any run of the kind
    # has finished: see the module's docstring.
    args.guess_s = {"stacked": 100.0, "25gaussians": 200.0, "8gaussians": 140.0}
    if args.smoke:
        args.guess_s = {}
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    jobs = plan(args)
    if args.configs:
        keep = set(args.configs.split(","))
        jobs = [j for j in jobs if j["config"] in keep]
    if args.adaptive < 0:  # auto: on for the whole plan, off for a hand-picked --configs list
        args.adaptive = 0 if args.configs else 2
    if args.list:
        for j in jobs:
            print(f"{j['id']:40s} {j['pool']:4s} {j['bench_command']}")
        return
    if args.out is None:
        p.error("--out is required")
    t_start = time.time()
    deadline = t_start + 60 * args.total_minutes
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="meg-sweep-"))
    (work / "jobs").mkdir()
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.time() - t_start:6.1f}s] {msg}"
        print(line, flush=True)
        log_lines.append(line)
        (out / "sweep_log.txt").write_text("\n".join(log_lines) + "\n")

    # Every process (a GPU worker drives its GPU from one CPU thread) gets a CPU of its own;
    # one CPU is left to this process and the system. Toys take the CPUs the GPU workers
    # do not hold (all of them once no GPU job is left), or --cpu-workers when given.
    ncpu = usable_cpus()
    total_slots = max(2, ncpu - 1)
    n_gpu_jobs = sum(j["pool"] == "gpu" for j in jobs)
    cpu_workers = args.cpu_workers or max(1, total_slots - min(args.gpu_workers, n_gpu_jobs))
    sweep: dict[str, Any] = {
        "command": "PYTHONPATH=. MEG_DATA_DIR=... python3 bench/sweep_gpu.py " + " ".join(sys.argv[1:]),
        "args": vars(args), "machine": machine(), "jobs": jobs, "results": {},
        "gpu_workers": args.gpu_workers, "cpu_workers": cpu_workers,
    }
    results: dict[str, dict[str, Any]] = sweep["results"]

    grids: dict[str, str] = {}

    def save(final: bool = False) -> None:
        sweep["wall_seconds"] = round(time.time() - t_start, 1)
        sweep["summary"] = summarise(results, jobs)
        sweep["finished"] = final
        # Sample grids (base64 PNG) go to their own file, so sweep.json stays small.
        for k, r in results.items():
            if "sample_grid_png_b64" in r:
                grids[k] = r.pop("sample_grid_png_b64")
        for name, obj in (("sweep.json", sweep), ("sweep_grids.json", grids)):
            tmp = out / (name + ".tmp")
            tmp.write_text(json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=1))
            tmp.replace(out / name)

    log(f"{len(jobs)} jobs; device {args.device}; machine {sweep['machine']}; "
        f"gpu workers {args.gpu_workers}, cpu workers {cpu_workers}, work dir {work}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, float, dict[str, Any], Any]] = {}
    classifiers_ready = not any(j["task"] == "stacked" for j in jobs)

    def expected_s(job: dict[str, Any]) -> float:
        """How long a job will likely take: the median of finished runs of its kind (x1.15),
        else a guess; never more than its cap."""
        kind = job["task"] if job["task"] == "stacked" else job["dataset"]
        took = sorted(r["process_seconds"] for k, r in results.items()
                      if r.get("status") == "ok" and r.get("kind") == kind)
        guess = 1.15 * took[len(took) // 2] if took else args.guess_s.get(kind, job["cap_s"] * 0.6)
        return min(guess, job["cap_s"])

    def start(job: dict[str, Any]) -> None:
        spec = {**job, "work": str(work), "result": str(work / "jobs" / (job["id"].replace("/", "_") + ".json"))}
        # Training ends by 80% of the cap, and early enough to be scored before the deadline
        # (a run cut short records the steps it reached: budget_complete false).
        spec["train_cap_s"] = round(max(5.0, min(0.8 * job["cap_s"], deadline - time.time() - 45)), 1)
        jp = work / "jobs" / (job["id"].replace("/", "_") + ".job.json")
        jp.write_text(json.dumps(spec))
        logf = open(work / "jobs" / (job["id"].replace("/", "_") + ".log"), "w")  # noqa: SIM115 (closed in finish)
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(jp)],
                                cwd=str(ROOT), env=env, stdout=logf, stderr=subprocess.STDOUT)
        running[job["id"]] = (proc, time.time(), spec, logf)

    def finish(job_id: str, status: str | None = None) -> None:
        proc, t0, spec, logf = running.pop(job_id)
        logf.close()
        rp = Path(spec["result"])
        if status is None and rp.is_file():
            r = json.loads(rp.read_text())
        else:
            r = {"status": status or f"no result (exit code {proc.returncode})"}
        r["process_seconds"] = round(time.time() - t0, 1)
        r["kind"] = spec["task"] if spec["task"] == "stacked" else spec["dataset"]
        r["started_at_s"] = round(t0 - t_start, 1)
        if r.get("status") != "ok":
            logp = Path(str(rp).removesuffix(".json") + ".log")
            r["log_tail"] = logp.read_text()[-2000:] if logp.is_file() else ""
        results[job_id] = r
        brief = {k: r.get(k) for k in ("modes_covered", "kl_modes_uniform", "high_quality_fraction", "steps")
                 if k in r}
        log(f"done {job_id}: {r.get('status')} in {r['process_seconds']}s {brief}")
        save()

    def start_toys_first() -> None:
        # Toys need no classifier: they use the CPUs while the classifiers train.
        for job in [j for j in pending if j["pool"] == "cpu"][:cpu_workers]:
            pending.remove(job)
            start(job)

    def on_term(signum: int, _frame: Any) -> None:
        for job_id in list(running):
            running[job_id][0].kill()
            finish(job_id, f"killed: the sweep got signal {signum}")
        for job in pending:
            results[job["id"]] = {"status": f"not started: the sweep got signal {signum}"}
        save(final=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    start_toys_first()
    if not classifiers_ready:
        try:
            sweep["classifiers"] = train_classifiers(args, work, log)
        except Exception as e:  # the toys still run
            import traceback

            log(f"classifiers failed, no StackedMNIST runs: {type(e).__name__}: {e}\n"
                f"{traceback.format_exc()[-2000:]}")
            for job in [j for j in pending if j["task"] == "stacked"]:
                pending.remove(job)
                results[job["id"]] = {"status": f"not started: classifiers failed ({e})"}
        classifiers_ready = True
        save()
    adaptive_done = args.adaptive <= 0
    while pending or running:
        now = time.time()
        if not adaptive_done:
            extra = adaptive_seeds(args, jobs, results, pending, args.adaptive)
            if extra or not any(j["task"] == "stacked" and j["config"] not in STACKED_SEEDED
                                for j in pending + [r[2] for r in running.values()]):
                adaptive_done = True
                # Only when one such run is likely to finish: the slowest StackedMNIST run so
                # far, plus a margin, against the time left.
                took = sorted(r.get("process_seconds", 0.0) for k, r in results.items()
                              if k.startswith("stacked/") and r.get("status") == "ok")
                if extra and took and now + 1.2 * took[len(took) // 2] < deadline - 30:
                    jobs.extend(extra)
                    pending[:0] = extra
                    log(f"adaptive seeds: {', '.join(j['id'] for j in extra)}")
                elif extra:
                    log("adaptive seeds skipped: too little time left")
        for job_id in list(running):
            proc, t0, spec, _ = running[job_id]
            if proc.poll() is not None:
                finish(job_id)
            elif now - t0 > spec["cap_s"] + 45 or now > deadline:
                proc.kill()
                proc.wait()
                finish(job_id, "killed: over its wall-clock cap" if now <= deadline
                       else "killed: the sweep's deadline")
        n_gpu = sum(1 for _, _, s, _ in running.values() if s["pool"] == "gpu")
        n_all = len(running)
        for job in list(pending):
            if now > deadline - 30:
                break
            gpu_left = any(j["pool"] == "gpu" for j in pending)
            if job["pool"] == "gpu":
                if n_gpu >= args.gpu_workers or n_all >= max(total_slots, args.gpu_workers):
                    continue
            else:
                cap = (args.cpu_workers or cpu_workers) if (args.cpu_workers or gpu_left) else total_slots
                if n_all - n_gpu >= cap or n_all >= max(total_slots, args.gpu_workers):
                    continue
            # A run that cannot finish its budget before the deadline still starts when at
            # least 40% of its cap is left: it stops early and records the steps it reached.
            if now + expected_s(job) > deadline - 15:
                continue
            pending.remove(job)
            start(job)
            n_all += 1
            n_gpu += job["pool"] == "gpu"
        if not running and pending and time.time() > deadline - 30:
            break
        if not running and pending and all(time.time() + expected_s(j) > deadline - 15 for j in pending):
            break
        time.sleep(0.5)
    for job in pending:
        results[job["id"]] = {"status": "not started: the sweep's deadline"}
    log(f"all runs finished or stopped; {sum(r.get('status') == 'ok' for r in results.values())} ok "
        f"of {len(jobs)}")
    save(final=True)
    try:
        plot_curves(out / "sweep_curves.png", results, jobs)
        plot_samples(out / "sweep_samples.png", results, jobs, grids)
    except Exception as e:  # the JSON is what matters
        log(f"plotting failed: {type(e).__name__}: {e}")
    for key, agg in sweep["summary"].items():
        parts = [f"{k} {v['mean']:.4g}" + (f"±{v['std']:.2g}" if v.get("std") is not None else "")
                 for k, v in agg.items() if isinstance(v, dict) and "mean" in v]
        log(f"{key} (n={agg['n_seeds']}): " + ", ".join(parts))
    log(f"wrote {out} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
