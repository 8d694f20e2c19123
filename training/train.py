"""Train a MEG model, top to bottom.

One generator step follows `n_critic` energy steps:
  energy:    mean E(x) − mean E(G(z)) + λ · mean ‖∇ₓE(x)‖²            (real x only)
  generator: mean E(G(z)) + w · MI-loss   (MI-loss = −Î(x; z): encoder MSE or JSD)
Negative samples may be refined by latent MALA on U(z) = E(G(z))/T + ½‖z‖².

Under `torchrun` every process trains on its own random batches and gradients are
averaged across processes before each optimiser step (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import roc_auc_score
from torch import nn

from meg.bundle import valid_name
from meg.mala import sample_latent
from meg.render import preview_png
from meg.threads import auto_threads
from training import losses
from training.config import CalibrateConfig, DataConfig, RecipeConfig, TrainConfig
from training.data import Dataset, check_calibration_size
from training.data.toys import toy_metrics
from training.evaluate import batched, evaluate
from training.export import export_bundle
from training.model import MEG, build_meg

CHECKPOINT = "checkpoint.pt"


# What may change when a run is resumed: how long it runs and how it is watched, not what
# it trains.
RESUMABLE_KEYS = frozenset({
    "train.steps", "train.max_minutes", "train.log_every", "train.eval_every",
    "train.preview_every", "train.checkpoint_every", "train.device", "train.num_threads",
    "train.select", "train.select_every",
})


class RunDirError(ValueError):
    """A run directory that would be overwritten, or a resume that cannot continue."""


@dataclass
class TrainResult:
    run_dir: Path
    bundle_dir: Path | None
    metrics: dict[str, Any]
    steps: int
    seconds: float
    model: MEG  # the trained networks, in eval mode


# --------------------------------------------------------------------------- data


def load_data(cfg: DataConfig, calibrate: CalibrateConfig | None = None) -> Dataset:
    """The dataset a recipe's [data] section names; `calibrate` sizes the calibration rows
    held out of its training rows (default: CalibrateConfig's)."""
    from training.data import CalibrationSplit

    cc = calibrate if calibrate is not None else CalibrateConfig()
    cal = CalibrationSplit(fraction=cc.fraction, max_rows=cc.max_rows)
    if cfg.source == "toy":
        from training.data.toys import load_toy

        return load_toy(cfg.toy, n=cfg.n, seed=cfg.split_seed)
    if cfg.source == "digits":
        from training.data.digits import load_digits_dataset

        return load_digits_dataset(anomaly_digit=None if cfg.anomaly_digit < 0 else cfg.anomaly_digit,
                                   seed=cfg.split_seed, calibration=cal)
    if cfg.source == "mnist":
        from training.data.mnist import load_mnist_dataset

        return load_mnist_dataset(anomaly_digit=cfg.anomaly_digit, seed=cfg.split_seed,
                                  calibration=cal)
    if cfg.source in ("kddcup99", "nids"):
        from training.data.kdd import load_kdd

        return load_kdd(seed=cfg.split_seed, protocol="paper" if cfg.source == "kddcup99" else "nids",
                        calibration=cal, unknown_category=cfg.unknown_category)
    if cfg.source == "tabular":
        from training.data.tabular import load_tabular

        if not cfg.path:
            raise ValueError("the tabular recipe needs a file: --set data.path=/path/to/file.csv")
        return load_tabular(
            cfg.path, label=cfg.label or None, normal_values=cfg.normal_values or None,
            categorical=cfg.categorical or None, numeric=cfg.numeric or None,
            drop=cfg.drop or None, seed=cfg.split_seed, calibration=cal,
            unknown_category=cfg.unknown_category,
        )
    raise ValueError(
        f"unknown data.source {cfg.source!r} (toy, digits, mnist, kddcup99, nids, tabular)")


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def broadcast_params(modules: list[nn.Module], d: Dist) -> None:
    if d.world > 1:
        for m in modules:
            for p in m.parameters():
                dist.broadcast(p.data, src=0)


def average_grads(modules: list[nn.Module], d: Dist) -> None:
    # Explicit all-reduce rather than DDP: the gradient penalty differentiates through
    # autograd.grad, which DDP's bucketed hooks do not support.
    if d.world > 1:
        for m in modules:
            for p in m.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad /= d.world


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device='cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


# --------------------------------------------------------------------------- run directories


def new_run_dir(name: str, base: Path = Path("runs")) -> Path:
    """A fresh run directory, base/NAME/<UTC time>-<random id>: two runs never share one."""
    return base / name / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to train over another run's checkpoint, or to resume without one."""
    ckpt = run_dir / CHECKPOINT
    if resume and not ckpt.is_file():
        raise RunDirError(f"--resume: {run_dir} holds no {CHECKPOINT} to continue")
    if not resume and ckpt.is_file():
        raise RunDirError(
            f"run directory {run_dir} already holds {CHECKPOINT}: pass --resume to continue "
            "that run, or another --run-dir (without --run-dir every run gets a fresh one)"
        )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """`section.key: saved -> requested` for every value that differs, RESUMABLE_KEYS and
    the run's name aside."""
    a, b = _flatten(saved), _flatten(requested)
    # A key added since the checkpoint was saved reads as its default there.
    defaults = _flatten(RecipeConfig(name="").to_dict())
    a |= {k: defaults[k] for k in b.keys() - a.keys() if k in defaults}
    return [
        f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
        for k in sorted(set(a) | set(b))
        if k not in RESUMABLE_KEYS and k != "name" and a.get(k) != b.get(k)
    ]


def _latest_run(name: str, base: Path = Path("runs")) -> Path | None:
    found = sorted((base / name).glob(f"*/{CHECKPOINT}"))
    return found[-1].parent if found else None


def _same_on_every_rank(value: Any, d: Dist) -> Any:
    if d.world > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


# --------------------------------------------------------------------------- checkpoint selection

SELECT_CRITERIA = ("swap_auroc", "sample_gap", "val_fit")
GP_ON = ("data", "interpolates")  # where the zero-centred penalty is taken (train.gp_on)
PROBE_ROWS = 2048  # rows (and samples) a selection check scores: cheap next to a step's work
SWAP_FRACTION = 0.25  # share of a held-out row's features taken from another held-out row


def selection_scores(
    e_val: np.ndarray, e_swap: np.ndarray, e_train: np.ndarray, e_fake: np.ndarray
) -> dict[str, float]:
    """Checkpoint-selection criteria from energies alone (higher = better); none reads a
    test row, so the chosen step is one a deployment without labels would also choose.

    - swap_auroc: AUROC of the energy telling held-out rows of the training class (e_val)
      from the same rows with a quarter of their features swapped in from other held-out
      rows (e_swap): pseudo-anomalies with the right marginals and broken dependencies.
    - sample_gap: (mean E(G(z)) − mean E(val)) / sd E(val), how far generator samples sit
      above held-out rows.
    - val_fit: −(mean E(val) − mean E(train)) / sd E(train): 0 without memorisation of the
      training rows, negative with it."""
    labels = np.r_[np.zeros(len(e_val)), np.ones(len(e_swap))]
    return {
        "swap_auroc": float(roc_auc_score(labels, np.r_[e_val, e_swap])),
        "sample_gap": float((np.mean(e_fake) - np.mean(e_val)) / (np.std(e_val) + 1e-8)),
        "val_fit": float(-(np.mean(e_val) - np.mean(e_train)) / (np.std(e_train) + 1e-8)),
    }


def swap_features(rows: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """`rows` with each feature, with probability `fraction`, taken from another row."""
    mask = rng.random(rows.shape) < fraction
    return np.where(mask, rows[rng.permutation(len(rows))], rows)


def mi_lower_bound(encoder_mse: float, latent_dim: int) -> float:
    """Barber-Agakov lower bound on I(x; z) in nats for z ~ N(0, I), with the encoder as a
    Gaussian q(z | x) of the best isotropic variance mse / d: −d/2 · log(mse / d)."""
    return -0.5 * latent_dim * math.log(max(encoder_mse, 1e-12) / latent_dim)


@dataclass
class Probe:
    """Fixed rows and latents every selection check scores, so checks are comparable."""

    val: torch.Tensor  # (V, D) held-out rows of the training class (dataset.select)
    swap: torch.Tensor  # (V, D) the same rows, features partly swapped (swap_features)
    train: torch.Tensor  # (V', D) a fixed sample of training rows
    z: torch.Tensor  # (P, latent)


def make_probe(data: Dataset, latent_dim: int, device: torch.device, seed: int) -> Probe | None:
    """The probe rows: the Dataset's selection rows and training rows only. Never its
    calibration rows (`val`): choosing a checkpoint by them would bias their scores and
    void the calibrated false-positive rate. None (no selection) without selection rows."""
    if data.select is None or len(data.select) == 0:
        return None
    g = np.random.default_rng(seed)
    val = data.select[g.permutation(len(data.select))[:PROBE_ROWS]]
    train_rows = data.train[g.permutation(len(data.train))[:PROBE_ROWS]]
    z = torch.randn(PROBE_ROWS, latent_dim, generator=torch.Generator().manual_seed(seed))
    swap = swap_features(val, SWAP_FRACTION, g)
    return Probe(torch.as_tensor(val, dtype=torch.float32, device=device),
                 torch.as_tensor(swap, dtype=torch.float32, device=device),
                 torch.as_tensor(train_rows, dtype=torch.float32, device=device), z.to(device))


@torch.no_grad()
def probe_model(meg: MEG, probe: Probe) -> dict[str, float]:
    """Selection criteria plus the entropy term's health (encoder MSE, MI bound) on the probe."""
    modes = {k: m.training for k, m in meg.modules().items()}
    for m in meg.modules().values():
        m.eval()
    x_fake = meg.generator(probe.z)  # (P, D)
    e = {k: meg.energy(x).float().cpu().numpy()
         for k, x in (("val", probe.val), ("swap", probe.swap), ("train", probe.train),
                      ("fake", x_fake))}
    mse = losses.encoder_mi_loss(probe.z, meg.encoder(x_fake)).item()
    for k, m in meg.modules().items():
        m.train(modes[k])
    out = selection_scores(e["val"], e["swap"], e["train"], e["fake"])
    out.update({"encoder_mse": mse, "mi_bound_nats": mi_lower_bound(mse, probe.z.shape[1])})
    return out


@dataclass
class Best:
    """The best weights so far by the selection criterion (kept in memory and checkpoints)."""

    criterion: str
    step: int = -1
    value: float = -math.inf
    modules: dict[str, dict[str, torch.Tensor]] | None = None

    def offer(self, step: int, value: float, mods: dict[str, nn.Module]) -> bool:
        if not value > self.value:  # NaN never wins
            return False
        self.step, self.value = step, value
        self.modules = {k: {n: t.detach().clone() for n, t in m.state_dict().items()}
                        for k, m in mods.items()}
        return True

    def to_state(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "step": self.step, "value": self.value,
                "modules": self.modules}


# --------------------------------------------------------------------------- the loop


def learning_rate(tc: TrainConfig, step: int) -> float:
    """The learning rate at `step`: stateless, so resuming needs no scheduler state."""
    if tc.lr_schedule == "constant":
        return tc.lr
    if tc.lr_schedule == "linear":
        return tc.lr * max(0.0, 1.0 - step / max(tc.steps, 1))
    raise ValueError(f"train.lr_schedule {tc.lr_schedule!r}: use constant or linear")


def set_learning_rate(optimizers: list[torch.optim.Optimizer], tc: TrainConfig, step: int) -> None:
    """Give every parameter group of `optimizers` the scheduled rate for `step`."""
    lr = learning_rate(tc, step)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def train(
    cfg: RecipeConfig,
    out: Path | None,
    run_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> TrainResult:
    """Train `cfg`, evaluate, and export a bundle to `out` (rank 0 only; None: no bundle).

    `run_dir` receives checkpoint.pt, metrics.json, TensorBoard scalars and previews; None
    gives a fresh runs/NAME/<time>-<id>. A directory that holds a checkpoint is refused
    unless `resume`, and `resume` refuses a missing checkpoint or one trained with another
    config (RunDirError)."""
    t0 = time.time()
    tc = cfg.train
    device = resolve_device(tc.device)
    dd = init_distributed(device)
    threads = auto_threads(tc.num_threads, use_load=True,
                           processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads.threads)
    if dd.main:
        print(f"{cfg.name}: threads: {threads.reason}", file=sys.stderr, flush=True)
    if out is not None and not valid_name(Path(out).name):
        raise ValueError(f"--out {out}: the directory name is the model name; use letters, digits, _ . -")
    if tc.select not in (*SELECT_CRITERIA, "last"):
        raise ValueError(f"train.select {tc.select!r}: use {', '.join(SELECT_CRITERIA)} or last")
    if tc.gp_on not in GP_ON:
        raise ValueError(f"train.gp_on {tc.gp_on!r}: use {' or '.join(GP_ON)}")
    if tc.entropy_noise < 0:
        raise ValueError(f"train.entropy_noise {tc.entropy_noise!r}: a noise std is >= 0")
    select_every = tc.select_every if tc.select_every > 0 else max(1, tc.steps // 20)
    # The run directory is settled before the data loads: a refusal should not wait for it.
    run_name = Path(out).name if out is not None else cfg.name
    if run_dir is None:
        if resume:
            latest = _latest_run(run_name)
            raise RunDirError("--resume needs --run-dir, the run to continue"
                              + (f" (the latest run of {run_name}: {latest})" if latest else ""))
        run_dir = _same_on_every_rank(new_run_dir(run_name), dd)
    run_dir = Path(run_dir)
    if dd.main:
        check_run_dir(run_dir, resume)
    torch.manual_seed(tc.seed + dd.rank)
    rng = torch.Generator(device=device).manual_seed(tc.seed * 1000 + dd.rank)

    data = dataset if dataset is not None else load_data(cfg.data, cfg.calibrate)
    check_calibration_size(len(data.val), cfg.calibrate.target_fpr)  # before training, not after
    cfg.model.data_dim = data.dim
    cfg.model.data_shape = list(data.spec.shape)
    x_all = torch.as_tensor(data.train, dtype=torch.float32, device=device)  # (N, D)

    meg = build_meg(cfg.model, tc.entropy, device)
    mods = meg.modules()
    betas = (tc.beta1, tc.beta2)
    opt_e = torch.optim.Adam(meg.energy.parameters(), lr=tc.lr, betas=betas)
    # G and the MI estimator (encoder or statistics network) are trained jointly.
    g_params = list(meg.generator.parameters()) + list(meg.encoder.parameters())
    if meg.statistics is not None:
        g_params += list(meg.statistics.parameters())
    opt_g = torch.optim.Adam(g_params, lr=tc.lr, betas=betas)

    step = 0
    ckpt_path = run_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        differ = config_differences(state["config"], cfg.to_dict())
        if differ:
            raise RunDirError(
                f"--resume: {ckpt_path} was trained with another config ({'; '.join(differ)}); "
                f"only {', '.join(sorted(RESUMABLE_KEYS))} may change when resuming"
            )
        for k, m in mods.items():
            m.load_state_dict(state["modules"][k])
        opt_e.load_state_dict(state["opt_e"])
        opt_g.load_state_dict(state["opt_g"])
        step = int(state["step"])
        rng.manual_seed(tc.seed * 1000 + dd.rank + step)
        saved_best = state.get("best")
    else:
        saved_best = None
    best = Best(tc.select)
    if saved_best is not None and saved_best["criterion"] == tc.select:
        best = Best(tc.select, int(saved_best["step"]), float(saved_best["value"]),
                    saved_best["modules"])
    probe = make_probe(data, cfg.model.latent_dim, device, seed=tc.seed + 7919) if dd.main else None
    selection: list[dict[str, float]] = []
    broadcast_params(list(mods.values()), dd)

    writer = None
    if dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional at run time
            writer = None

    def batch() -> torch.Tensor:
        idx = torch.randint(0, x_all.shape[0], (tc.batch_size,), device=device, generator=rng)
        return x_all[idx]  # (B, D)

    def prior(n: int) -> torch.Tensor:
        return torch.randn(n, cfg.model.latent_dim, device=device, generator=rng)  # (B, latent)

    def negatives(n: int) -> torch.Tensor:
        if tc.mcmc_steps <= 0:
            with torch.no_grad():
                return meg.generator(prior(n))
        res = sample_latent(
            meg.generator, meg.energy, n, cfg.model.latent_dim, tc.mcmc_steps,
            step_size=tc.mcmc_step_size, temperature=tc.mcmc_temperature, prior=tc.mcmc_prior,
            rng=rng, device=device,
        )
        with torch.no_grad():
            return meg.generator(res.z)

    bar = None
    if progress and dd.main:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step, desc=cfg.name, dynamic_ncols=True)

    def save_checkpoint() -> None:
        if dd.main:
            torch.save(
                {"config": cfg.to_dict(), "step": step, "opt_e": opt_e.state_dict(),
                 "opt_g": opt_g.state_dict(), "modules": {k: m.state_dict() for k, m in mods.items()},
                 "best": best.to_state()},
                ckpt_path,
            )

    def check_selection() -> None:
        if probe is None or (selection and selection[-1]["step"] == step):
            return
        check = probe_model(meg, probe)
        selection.append({"step": step, **check})
        if tc.select != "last":
            best.offer(step, check[tc.select], mods)
        if writer is not None:
            for k, v in check.items():
                writer.add_scalar(f"select/{k}", v, step)

    last: dict[str, float] = {}
    history: list[dict[str, float]] = []
    deadline = t0 + 60 * tc.max_minutes if tc.max_minutes > 0 else math.inf
    while step < tc.steps and time.time() < deadline:
        set_learning_rate([opt_e, opt_g], tc, step)
        # ---- energy: lower E on data, raise it on samples, zero-centred penalty on data
        for _ in range(tc.n_critic):
            x_real = batch()
            x_fake = negatives(tc.batch_size)
            if tc.gp_on == "data":
                penalty, e_real = losses.gradient_penalty(meg.energy, x_real)
            else:
                penalty, _ = losses.gradient_penalty(
                    meg.energy, losses.interpolates(x_real, x_fake, rng))
                e_real = meg.energy(x_real)
            e_fake = meg.energy(x_fake)
            loss_e = losses.energy_loss(e_real, e_fake, penalty, tc.gp_weight)
            opt_e.zero_grad(set_to_none=True)
            loss_e.backward()
            average_grads([meg.energy], dd)
            opt_e.step()

        # ---- generator: lower E(G(z)) while keeping z recoverable from G(z) (entropy)
        z = prior(tc.batch_size)
        x_gen = meg.generator(z)  # (B, D)
        e_gen = meg.energy(x_gen)
        x_mi = x_gen  # what the MI estimator reads
        if tc.entropy_noise > 0:
            x_mi = x_gen + tc.entropy_noise * torch.randn(
                x_gen.shape, device=device, generator=rng)
        if meg.statistics is not None:
            perm = torch.randperm(z.shape[0], device=device, generator=rng)
            mi = losses.jsd_mi_loss(meg.statistics(x_mi, z), meg.statistics(x_mi, z[perm]))
            # The encoder still learns to invert G (on detached, noiseless samples) for /encode.
            mi_aux = losses.encoder_mi_loss(z, meg.encoder(x_gen.detach()))
        else:
            mi = losses.encoder_mi_loss(z, meg.encoder(x_mi))
            mi_aux = torch.zeros((), device=device)
        # The entropy term's health, whichever estimator trains G: how well the encoder
        # recovers z from G(z) on this batch (its MSE, against E‖z‖² = latent_dim with no
        # information) and the Barber-Agakov bound on I(x; z) that MSE implies.
        encoder_mse = mi_aux if meg.statistics is not None else mi
        loss_g = losses.generator_loss(e_gen, mi, tc.entropy_weight) + mi_aux
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        average_grads([m for k, m in mods.items() if k != "energy"], dd)
        opt_g.step()
        step += 1

        if step % tc.log_every == 0 or step == tc.steps:
            last = {
                "loss_energy": loss_e.item(), "loss_generator": loss_g.item(),
                "penalty": penalty.item(), "mi_loss": mi.item(),
                "energy_gap": (e_real.mean() - e_fake.mean()).item(),
                "energy_real": e_real.mean().item(), "energy_fake": e_fake.mean().item(),
                "encoder_mse": encoder_mse.item(),
                "mi_bound_nats": mi_lower_bound(encoder_mse.item(), cfg.model.latent_dim),
            }
            if meg.statistics is not None:
                # The JSD estimator's own value: −(its loss) + log 4 is ≥ 0, higher = more MI.
                last["mi_jsd"] = math.log(4.0) - mi.item()
            history.append({"step": step, **last})
            if writer is not None:
                for k, v in last.items():
                    writer.add_scalar(f"train/{k}", v, step)
            if bar is not None:
                bar.set_postfix(E=f"{last['loss_energy']:.3f}", G=f"{last['loss_generator']:.3f}",
                                gap=f"{last['energy_gap']:.3f}", mi=f"{last['mi_loss']:.3f}")
        if bar is not None:
            bar.update(1)
        if dd.main and tc.eval_every and step % tc.eval_every == 0:
            periodic = _evaluate(meg, data, device, tc)
            if writer is not None:
                for k, v in periodic.items():
                    if isinstance(v, int | float):
                        writer.add_scalar(f"eval/{k}", v, step)
        if step % select_every == 0:
            check_selection()
        if dd.main and tc.preview_every and step % tc.preview_every == 0:
            _preview(meg, data, device, run_dir / "previews" / f"step_{step:07d}.png")
        if tc.checkpoint_every and step % tc.checkpoint_every == 0:
            save_checkpoint()
    if bar is not None:
        bar.close()
    if step > 0:
        check_selection()  # the last step is always a candidate (also after max_minutes)
    save_checkpoint()

    metrics: dict[str, Any] = {}
    bundle_dir = None
    # Export the best weights by the criterion (test rows are read only below, to report);
    # rank 0 chose them, and every rank returns them.
    if dd.main and best.modules is not None and best.step != step:
        for k, m in mods.items():
            m.load_state_dict(best.modules[k])
    broadcast_params(list(mods.values()), dd)
    if dd.main:
        chosen = best.step if best.modules is not None else step
        metrics = _evaluate(meg, data, device, tc)
        metrics.update({"steps": step, "train_seconds": round(time.time() - t0, 2),
                        "threads": threads.threads, "selected_step": chosen,
                        "select_criterion": tc.select})
        if best.modules is not None:
            metrics["select_value"] = best.value
        if writer is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float):
                    writer.add_scalar(f"eval/{k}", v, step)
            writer.close()
        _preview(meg, data, device, run_dir / "previews" / "final.png")
        if out is not None:
            export_bundle(meg, cfg.to_dict(), data, metrics, Path(out), seed=tc.seed)
            bundle_dir = Path(out)
        (run_dir / "metrics.json").write_text(
            json.dumps({"final": metrics, "history": history, "selection": selection}, indent=2)
        )
    if dd.world > 1:
        dist.barrier()
    for m in mods.values():
        m.eval()
    return TrainResult(run_dir, bundle_dir, metrics, step, time.time() - t0, meg)


def _numpy_fns(meg: MEG, device: torch.device):
    def energy_np(x: np.ndarray) -> np.ndarray:
        return batched(meg.energy, x, device)

    def sample_np(n: int) -> np.ndarray:
        with torch.no_grad():
            z = torch.randn(n, meg.generator.cfg.latent_dim, device=device,
                            generator=torch.Generator(device=device).manual_seed(12345))
            return meg.generator(z).cpu().numpy()

    return energy_np, sample_np


def _evaluate(meg: MEG, data: Dataset, device: torch.device, tc: TrainConfig) -> dict[str, Any]:
    for m in meg.modules().values():
        m.eval()
    energy_np, sample_np = _numpy_fns(meg, device)
    out = evaluate(data, energy_np, sample_np)
    if tc.eval_mcmc_steps > 0 and data.spec.kind == "points":
        res = sample_latent(
            meg.generator, meg.energy, 2500, meg.generator.cfg.latent_dim, tc.eval_mcmc_steps,
            step_size=tc.mcmc_step_size, temperature=tc.eval_mcmc_temperature, adapt=True,
            rng=torch.Generator(device=device).manual_seed(12345), device=device,
        )
        with torch.no_grad():
            samples = meg.generator(res.z).cpu().numpy()
        out.update({f"mala_{k}": v for k, v in toy_metrics(data.name, samples).items()})
        out["mala_acceptance"] = float(res.acceptance.mean())
        out["mala_step_size"] = res.step_size
    for m in meg.modules().values():
        m.train()
    return out


def _preview(meg: MEG, data: Dataset, device: torch.device, path: Path) -> None:
    energy_np, sample_np = _numpy_fns(meg, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(preview_png(data.spec, sample_np(256), energy_np, data.val[:2000]))
