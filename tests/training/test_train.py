"""Training: every recipe trains a few steps; seeds repeat; resume continues; the JSD
estimator and latent MCMC paths run; 2-process data-parallel training agrees."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from megtest import TINY, make_table

from training.config import apply_overrides, load_recipe
from training.evaluate import anomaly_metrics
from training.train import (
    CHECKPOINT,
    RunDirError,
    config_differences,
    load_data,
    mi_lower_bound,
    selection_scores,
    swap_features,
    train,
)

DATA = Path(os.environ.get("MEG_DATA_DIR", "data"))
ROOT = Path(__file__).resolve().parents[2]


def tiny(recipe, *extra):
    return apply_overrides(load_recipe(recipe), TINY + list(extra))


def needs(relpath):
    return pytest.mark.skipif(not (DATA / relpath).is_file(), reason=f"{DATA / relpath} missing")


@pytest.mark.parametrize("recipe, extra", [
    ("25gaussians", ["data.n=1000"]),
    ("8gaussians", ["data.n=1000"]),
    ("swissroll", ["data.n=1000"]),
    ("digits", []),
    pytest.param("mnist", ["model.conv_width=8"], marks=needs("mnist/t10k-images-idx3-ubyte.gz")),
    pytest.param("kddcup99", [], marks=needs("kddcup99/kddcup.data_10_percent.gz")),
])
def test_recipe_trains_a_few_steps(recipe, extra, tmp_path):
    res = train(tiny(recipe, *extra), None, tmp_path / "run", progress=False)
    assert res.steps == 20
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["final"]["steps"] == 20 and saved["history"]
    assert all(torch.isfinite(torch.tensor(h["loss_energy"])) for h in saved["history"])
    assert (tmp_path / "run" / "previews" / "final.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    if recipe in ("digits", "mnist", "kddcup99"):
        assert 0.0 <= res.metrics["auroc"] <= 1.0
    if recipe == "kddcup99":
        assert {"precision", "recall", "f1"} <= set(res.metrics)
    if recipe in ("25gaussians", "8gaussians"):
        assert "modes_covered" in res.metrics


def test_tabular_recipe(tmp_path):
    csv = tmp_path / "t.csv"
    make_table().to_csv(csv, index=False)
    cfg = tiny("tabular", f"data.path={str(csv)!r}", "data.label='label'")
    res = train(cfg, None, tmp_path / "run", progress=False)
    assert 0.0 <= res.metrics["auroc"] <= 1.0


def test_jsd_entropy_and_latent_mcmc(tmp_path):
    cfg = tiny("25gaussians", "data.n=1000", "train.entropy='jsd'", "train.mcmc_steps=3",
               "train.steps=5")
    res = train(cfg, None, tmp_path / "run", progress=False)
    assert res.steps == 5
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert "statistics" in state["modules"] and state["config"]["train"]["entropy"] == "jsd"


@pytest.mark.parametrize("entropy", ["encoder", "jsd"])
def test_history_logs_the_entropy_terms_health(entropy, tmp_path):
    # Both estimators log how well the encoder recovers z and the Barber-Agakov bound that
    # MSE implies; the JSD estimator also logs its own value (log 4 − its loss, ≥ 0 at best).
    cfg = tiny("25gaussians", "data.n=1000", f"train.entropy='{entropy}'")
    train(cfg, None, tmp_path / "run", progress=False)
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    for h in hist:
        assert h["encoder_mse"] > 0
        assert h["mi_bound_nats"] == pytest.approx(mi_lower_bound(h["encoder_mse"], 2))
        if entropy == "encoder":
            assert h["encoder_mse"] == h["mi_loss"]
        else:
            assert h["mi_jsd"] == pytest.approx(np.log(4.0) - h["mi_loss"])


@pytest.mark.parametrize("setting", ["train.gp_on='interpolates'", "train.entropy_noise=0.5"])
def test_penalty_place_and_entropy_noise_change_training(setting, tmp_path):
    base = ["data.n=1000", "train.steps=5"]
    train(tiny("25gaussians", *base), None, tmp_path / "a", progress=False)
    res = train(tiny("25gaussians", *base, setting), None, tmp_path / "b", progress=False)
    pa, pb = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert res.steps == 5 and not all(torch.equal(pa[k], pb[k]) for k in pa)
    hist = json.loads((tmp_path / "b" / "metrics.json").read_text())["history"]
    assert all(np.isfinite(h["penalty"]) and h["penalty"] >= 0 for h in hist)


@pytest.mark.parametrize(("setting", "message"), [
    ("train.gp_on='samples'", "train.gp_on 'samples': use data or interpolates"),
    ("train.entropy_noise=-0.1", "train.entropy_noise -0.1: a noise std is >= 0"),
])
def test_bad_penalty_place_or_noise_is_refused_before_training(setting, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        train(tiny("25gaussians", "data.n=1000", setting), None, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    run = tmp_path / "run"
    train(tiny("25gaussians", "data.n=1000", "train.steps=2"), None, run, progress=False)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    del state["config"]["train"]["gp_on"], state["config"]["train"]["entropy_noise"]
    torch.save(state, run / CHECKPOINT)
    res = train(tiny("25gaussians", "data.n=1000", "train.steps=4"), None, run, resume=True,
                progress=False)
    assert res.steps == 4
    with pytest.raises(RunDirError, match="train.gp_on: 'data' -> 'interpolates'"):
        train(tiny("25gaussians", "data.n=1000", "train.steps=6", "train.gp_on='interpolates'"),
              None, run, resume=True, progress=False)


def _params(run_dir):
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    return state["modules"]["energy"]


def test_same_seed_same_run(tmp_path):
    a = train(tiny("25gaussians", "data.n=1000"), None, tmp_path / "a", progress=False)
    b = train(tiny("25gaussians", "data.n=1000"), None, tmp_path / "b", progress=False)
    train(tiny("25gaussians", "data.n=1000", "train.seed=1"), None, tmp_path / "c", progress=False)
    pa, pb, pc = _params(tmp_path / "a"), _params(tmp_path / "b"), _params(tmp_path / "c")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
    assert a.metrics["energy_val_mean"] == b.metrics["energy_val_mean"]


def test_resume_continues_from_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny("25gaussians", "data.n=1000", "train.steps=10"), None, run, progress=False)
    res = train(tiny("25gaussians", "data.n=1000", "train.steps=15"), None, run, resume=True,
                progress=False)
    assert res.steps == 15
    assert torch.load(run / CHECKPOINT, weights_only=True)["step"] == 15
    hist = json.loads((run / "metrics.json").read_text())["history"]
    assert hist[0]["step"] > 10  # only the resumed steps ran


def test_resume_keeps_the_best_checkpoint_so_far(tmp_path, monkeypatch):
    import training.train as T

    values = iter([0.1, 0.9, 0.2, 0.3, 0.4])  # checks at steps 2, 4 | 6, 8, 10
    real = T.selection_scores
    monkeypatch.setattr(T, "selection_scores",
                        lambda *a: {**real(*a), "swap_auroc": next(values)})
    run = tmp_path / "run"
    base = ["data.n=1000", "train.select='swap_auroc'", "train.select_every=2"]
    train(tiny("25gaussians", *base, "train.steps=4"), None, run, progress=False)
    res = train(tiny("25gaussians", *base, "train.steps=10"), None, run, resume=True,
                progress=False)
    assert res.metrics["selected_step"] == 4 and res.metrics["select_value"] == 0.9


def test_default_run_dirs_are_fresh_and_checkpoints_are_never_shared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny("25gaussians", "data.n=1000", "train.steps=2")
    a = train(cfg, None, progress=False)
    b = train(tiny("25gaussians", "data.n=1000", "train.steps=2"), None, progress=False)
    assert a.run_dir != b.run_dir and a.run_dir.parent == b.run_dir.parent == Path("runs/25gaussians")
    assert (a.run_dir / CHECKPOINT).is_file() and (b.run_dir / CHECKPOINT).is_file()
    with pytest.raises(RunDirError, match="already holds checkpoint.pt: pass --resume"):
        train(tiny("25gaussians", "data.n=1000", "train.steps=2"), None, a.run_dir, progress=False)
    with pytest.raises(RunDirError, match="holds no checkpoint.pt"):
        train(tiny("25gaussians", "data.n=1000"), None, tmp_path / "empty", resume=True,
              progress=False)
    with pytest.raises(RunDirError, match="--resume needs --run-dir.*latest run of 25gaussians"):
        train(tiny("25gaussians", "data.n=1000"), None, resume=True, progress=False)


def test_resume_refuses_another_config_and_names_the_keys(tmp_path):
    run = tmp_path / "run"
    train(tiny("25gaussians", "data.n=1000", "train.steps=2"), None, run, progress=False)
    other = tiny("25gaussians", "data.n=1000", "train.steps=4", "train.lr=0.5", "model.latent_dim=3")
    with pytest.raises(RunDirError) as e:
        train(other, None, run, resume=True, progress=False)
    msg = str(e.value)
    assert "train.lr: 0.001 -> 0.5" in msg and "model.latent_dim: 2 -> 3" in msg
    assert "train.steps:" not in msg  # more steps is what resuming is for


def test_config_differences_ignore_what_resuming_may_change():
    saved = {"name": "a", "train": {"steps": 1, "lr": 0.1, "log_every": 5}, "model": {"z": [1]}}
    req = {"name": "b", "train": {"steps": 9, "lr": 0.1, "log_every": 7}, "model": {"z": [2]}}
    assert config_differences(saved, req) == ["model.z: [1] -> [2]"]
    assert config_differences(saved, saved) == []


def _energy_params(meg):
    return {k: v.detach().clone() for k, v in meg.energy.state_dict().items()}


def test_the_export_is_the_best_checkpoint_by_the_criterion(tmp_path, monkeypatch):
    """Scripted criterion values peak at the second check (step 4 of 10): the bundle gets
    the step-4 weights, which a 4-step run of the same seed reproduces."""
    import training.train as T

    values = iter([0.1, 0.9, 0.2, 0.3, 0.4])
    real = T.selection_scores
    monkeypatch.setattr(T, "selection_scores",
                        lambda *a: {**real(*a), "swap_auroc": next(values)})
    exported = {}
    monkeypatch.setattr(T, "export_bundle",
                        lambda meg, *a, **k: exported.update(_energy_params(meg)))
    base = ["data.n=1000", "train.lr_schedule='constant'", "train.select='swap_auroc'",
            "train.select_every=2"]
    res = train(tiny("25gaussians", *base, "train.steps=10"), tmp_path / "m", tmp_path / "run",
                progress=False)
    assert res.steps == 10 and res.metrics["selected_step"] == 4
    assert res.metrics["select_criterion"] == "swap_auroc" and res.metrics["select_value"] == 0.9
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [c["step"] for c in saved["selection"]] == [2, 4, 6, 8, 10]
    monkeypatch.setattr(T, "selection_scores", real)
    ref = train(tiny("25gaussians", *base, "train.steps=4", "train.select='last'"), None,
                tmp_path / "ref", progress=False)
    assert ref.metrics["selected_step"] == 4
    want = _energy_params(ref.model)
    assert exported.keys() == want.keys() and all(torch.equal(exported[k], want[k]) for k in want)
    # The checkpoint keeps the last step's weights (to resume) beside the chosen ones.
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert state["step"] == 10 and state["best"]["step"] == 4
    assert not all(torch.equal(state["modules"]["energy"][k], want[k]) for k in want)
    assert all(torch.equal(state["best"]["modules"]["energy"][k], want[k]) for k in want)


class _Poison:
    """Test rows that fail on any read."""

    def _fail(self, *a, **k):
        raise AssertionError("a test row was read before the checkpoint was chosen")

    __array__ = __getitem__ = __len__ = __iter__ = _fail
    shape = property(_fail)


def test_the_criterion_reads_no_test_rows(tmp_path, monkeypatch):
    import training.train as T

    data = load_data(tiny("digits").data)
    data.test_x, data.test_y = _Poison(), _Poison()
    # Only the final report reads test rows, after the choice; stand it in.
    monkeypatch.setattr(T, "_evaluate", lambda *a: {})
    res = train(tiny("digits", "train.select_every=5"), None, tmp_path / "run", progress=False,
                dataset=data)
    assert res.metrics["selected_step"] in (5, 10, 15, 20)
    checks = json.loads((tmp_path / "run" / "metrics.json").read_text())["selection"]
    assert [c["step"] for c in checks] == [5, 10, 15, 20]
    assert all(0.0 <= c["swap_auroc"] <= 1.0 and c["encoder_mse"] > 0 for c in checks)


def test_selection_scores_and_swapped_rows():
    rng = np.random.default_rng(0)
    e = rng.normal(size=500)
    s = selection_scores(e, e + 10.0, e, e + 3 * e.std())
    assert s["swap_auroc"] == 1.0 and s["sample_gap"] == pytest.approx(3.0)
    assert s["val_fit"] == pytest.approx(0.0)
    assert selection_scores(e, rng.normal(size=500), e, e)["swap_auroc"] == pytest.approx(0.5, abs=0.06)
    rows = rng.normal(size=(400, 8))
    assert np.array_equal(swap_features(rows, 0.0, rng), rows)
    swapped = swap_features(rows, 0.25, rng)
    changed = swapped != rows
    assert 0.2 < changed.mean() < 0.3  # about a quarter of the features
    assert np.isin(swapped, rows).all()  # values come from other rows, none are made up


def test_the_entropy_term_improves_and_is_logged(tmp_path):
    """The encoder's reconstruction ‖z − Enc(G(z))‖² on a fixed probe falls over a short
    toy run, so the MI lower bound rises; both go to metrics.json (and TensorBoard)."""
    res = train(tiny("25gaussians", "data.n=1000", "train.steps=60", "train.select_every=10",
                     "train.lr_schedule='constant'"),
                None, tmp_path / "run", progress=False)
    checks = json.loads((tmp_path / "run" / "metrics.json").read_text())["selection"]
    mse = [c["encoder_mse"] for c in checks]
    assert len(mse) == 6 and np.all(np.diff(mse) < 0) and mse[-1] < 0.95 * mse[0]
    assert checks[-1]["mi_bound_nats"] > checks[0]["mi_bound_nats"]
    assert mi_lower_bound(2.0, 2) == pytest.approx(0.0)  # Enc(x) = 0 recovers nothing
    assert res.metrics["selected_step"] in [c["step"] for c in checks]


def test_thread_count_is_stated_and_applied(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    calls: list[int] = []
    res = train(tiny("25gaussians", "data.n=1000", "train.steps=2", "train.num_threads=3"), None,
                tmp_path / "run", progress=False)
    assert calls == [3] and res.metrics["threads"] == 3
    assert "25gaussians: threads: 3 (requested)" in capsys.readouterr().err
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # auto honours the environment's cap
    res = train(tiny("25gaussians", "data.n=1000", "train.steps=2"), None, tmp_path / "run2",
                progress=False)
    assert calls[-1] == 1 and "OMP_NUM_THREADS=1" in capsys.readouterr().err




def test_two_process_data_parallel(tmp_path):
    """torchrun with 2 CPU processes (gloo): both finish, rank 0 writes the run, and the
    gradient all-reduce keeps the replicas identical."""
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys, hashlib, torch\n"
        "import torch.distributed as dist\n"
        "from megtest import TINY\n"
        "from training.config import apply_overrides, load_recipe\n"
        "import training.train as T\n"
        "cfg = apply_overrides(load_recipe('25gaussians'), TINY + ['data.n=1000', 'train.steps=6'])\n"
        "captured = {}\n"
        "orig = T.build_meg\n"
        "def spy(*a, **k):\n"
        "    captured['meg'] = orig(*a, **k)\n"
        "    return captured['meg']\n"
        "T.build_meg = spy\n"
        "res = T.train(cfg, None, sys.argv[1], progress=False)\n"
        "flat = torch.cat([p.detach().flatten() for p in captured['meg'].energy.parameters()])\n"
        "digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()\n"
        "report = f'RANK {dist.get_rank()} WORLD {dist.get_world_size()} STEPS {res.steps} HASH {digest}'\n"
        "open(f'{sys.argv[1]}.rank{dist.get_rank()}', 'w').write(report)\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(script), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each rank writes its own report file: ranks share one stdout and interleave there.
    reports = "\n".join(p.read_text() for p in sorted(tmp_path.glob("run.rank*")))
    found = re.findall(r"RANK (\d) WORLD (\d) STEPS (\d+) HASH ([0-9a-f]{64})", reports)
    assert sorted(r[0] for r in found) == ["0", "1"], proc.stdout[-2000:]
    assert all(r[1] == "2" and r[2] == "6" for r in found)
    assert found[0][3] == found[1][3], "replicas diverged: gradients were not averaged"
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_learning_rate_schedules():
    from training.train import learning_rate

    cfg = tiny("25gaussians", "train.lr=0.01", "train.steps=100", "train.lr_schedule='constant'")
    assert learning_rate(cfg.train, 0) == learning_rate(cfg.train, 99) == 0.01
    cfg = tiny("25gaussians", "train.lr=0.01", "train.steps=100", "train.lr_schedule='linear'")
    assert learning_rate(cfg.train, 0) == 0.01
    assert learning_rate(cfg.train, 50) == pytest.approx(0.005)
    assert learning_rate(cfg.train, 100) == 0.0
    cfg = tiny("25gaussians", "train.lr_schedule='cosine'")
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(cfg.train, 0)


def test_eval_time_mala_metrics(tmp_path):
    cfg = tiny("25gaussians", "data.n=1000", "train.steps=3", "train.eval_mcmc_steps=5")
    res = train(cfg, None, tmp_path / "run", progress=False)
    assert 0 <= res.metrics["mala_modes_covered"] <= 25
    assert 0.0 <= res.metrics["mala_acceptance"] <= 1.0


def test_result_carries_the_trained_model(tmp_path):
    cfg = tiny("digits")
    res = train(cfg, None, tmp_path / "run", progress=False)
    data = load_data(cfg.data)
    assert not res.model.energy.training
    with torch.no_grad():
        energy = res.model.energy(torch.as_tensor(data.test_x)).numpy()
    # The scores behind the reported metrics are this model's energies.
    assert anomaly_metrics(energy, data.test_y, data.contamination)["auroc"] == pytest.approx(
        res.metrics["auroc"], abs=1e-6)
