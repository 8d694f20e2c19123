"""Typed configuration: one dataclass per concern, recipes as small TOML files.

A recipe (training/recipes/NAME.toml) fills `RecipeConfig`; `--set section.key=value`
overrides any field. The resolved config is stored in checkpoints and bundle manifests.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class DataConfig:
    source: str = "toy"  # toy | digits | mnist | kddcup99 | nids | tabular
    toy: str = "25gaussians"  # toy: which one
    n: int = 100_000  # toy: number of training points
    anomaly_digit: int = 9  # digits/mnist: held-out class (-1: none)
    split_seed: int = 42  # the protocol's split seed
    path: str = ""  # tabular: CSV or Parquet file
    label: str = ""  # tabular: label column ("" for none)
    normal_values: list[Any] = field(default_factory=list)  # tabular: label values that are normal
    categorical: list[str] = field(default_factory=list)  # tabular: declared categorical columns
    numeric: list[str] = field(default_factory=list)  # tabular: declared numeric columns
    drop: list[str] = field(default_factory=list)  # tabular: columns to ignore
    # tabular, kddcup99, nids: a category value training never saw is scored with an
    # all-zero one-hot block ("zeros") or rejects the record ("error")
    unknown_category: str = "zeros"


@dataclass
class ModelConfig:
    arch: str = "mlp"  # mlp | conv (conv needs an image shape)
    latent_dim: int = 2
    g_hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    e_hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    enc_hidden: list[int] = field(default_factory=lambda: [512, 512])
    t_hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    g_output: str = "linear"  # linear | tanh | sigmoid
    conv_width: int = 64  # conv: channels of the first conv layer
    # Filled from the data at train time:
    data_dim: int = 0
    data_shape: list[int] = field(default_factory=list)


@dataclass
class TrainConfig:
    steps: int = 2000  # generator steps
    batch_size: int = 256
    n_critic: int = 5  # energy steps per generator step
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | linear (decay to 0 at the last step)
    beta1: float = 0.5
    beta2: float = 0.9
    gp_weight: float = 0.1  # λ of the zero-centred gradient penalty
    # Where the zero-centred penalty is taken: "data" (the paper's: real rows) or
    # "interpolates" (random points between real rows and samples, Thanh-Tung et al. 2019)
    gp_on: str = "data"
    entropy: str = "encoder"  # encoder | jsd
    entropy_weight: float = 1.0
    # Std of Gaussian noise added to G(z) before the MI estimator reads it (0: none). The
    # bound is then on I(G(z) + noise; z): information about z hidden in changes smaller
    # than the noise no longer counts as entropy.
    entropy_noise: float = 0.0
    mcmc_steps: int = 0  # latent MALA steps for the negative phase (0: off)
    mcmc_step_size: float = 0.01
    mcmc_temperature: float = 1.0
    mcmc_prior: bool = True
    eval_mcmc_steps: int = 0  # toys: also report sample metrics after latent MALA
    eval_mcmc_temperature: float = 1.0
    max_minutes: float = 0.0  # stop early after this wall time (0: no limit)
    log_every: int = 50
    eval_every: int = 0  # test metrics to TensorBoard every N steps (0: only at the end)
    # The exported weights: the best checkpoint by a criterion that reads no test rows
    # (training/train.py, selection_scores): swap_auroc | sample_gap | val_fit | last
    # (the final step).
    select: str = "swap_auroc"
    select_every: int = 0  # steps between selection checks (0: steps // 20)
    preview_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # torch intra-op threads (0: auto, from the CPUs free to this process)


@dataclass
class CalibrateConfig:
    """How a bundle's flags are calibrated (docs/bundle.md, Calibration): conformal
    p-values against the scores of held-out rows of the training class."""

    target_fpr: float = 0.05  # default target false-positive rate α: flag p-value <= α
    fraction: float = 0.2  # share of the training class's training rows held out to calibrate
    max_rows: int = 20_000  # at most this many calibration rows (a seeded subset); the rest train

    def __post_init__(self) -> None:
        if not 0.0 < self.target_fpr < 1.0:
            raise ConfigError(f"calibrate.target_fpr must be in (0, 1), got {self.target_fpr}")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"calibrate.fraction must be in (0, 1), got {self.fraction}")
        if self.max_rows < 1:
            raise ConfigError(f"calibrate.max_rows must be >= 1, got {self.max_rows}")


@dataclass
class RecipeConfig:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> RecipeConfig:
        """Build from nested dicts, checking every section, key and value type; errors
        start with `where` (a file path, `--set ...`, a manifest)."""
        sections = _section_types()
        unknown = set(d) - {"name", *sections}
        if unknown:
            raise ConfigError(
                f"{where}: unknown section(s) {', '.join(f'[{u}]' for u in sorted(unknown))} "
                f"(known: {', '.join(sorted(sections))})"
            )
        name = d.get("name", "custom")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: name: expected str, got {type(name).__name__} {name!r}")
        built = {}
        for section in sections:
            values = d.get(section, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: {section}: expected a [{section}] table, got {values!r}")
            built[section] = _build(sections[section], values, section, where)
        return cls(name=name, **built)


class ConfigError(ValueError):
    """A recipe, a config file or an override is wrong; the message says what to fix."""


def _section_types() -> dict[str, type]:
    """Section name -> its dataclass, read off RecipeConfig's fields."""
    return {f.name: f.default_factory for f in fields(RecipeConfig)  # type: ignore[misc]
            if f.name != "name"}


def _build(cls: type, values: dict[str, Any], section: str, where: str) -> Any:
    defaults = cls()
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) in [{section}]: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(names))})"
        )
    checked = {
        k: check_value(section, k, v, getattr(defaults, k), where) for k, v in values.items()
    }
    return cls(**checked)


def check_value(section: str, key: str, value: Any, default: Any, where: str) -> Any:
    """`value` for `section.key` if it has the default's type (an int where a float is
    expected becomes a float), else a ConfigError naming where, the key, the expected
    type and the value."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if default is None:  # an optional value: any type
        return value
    expected = type(default).__name__
    ok = _same_kind(default, value)
    if ok and isinstance(default, list) and default and value:
        # A list default with elements fixes the element type (layer widths are ints).
        kind = default[0]
        ok = all(_same_kind(kind, v) for v in value)
        expected = f"list of {type(kind).__name__}"
    if not ok:
        raise ConfigError(
            f"{where}: {section}.{key}: expected {expected}, got {type(value).__name__} {value!r}"
        )
    return value


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load_recipe(name_or_path: str) -> RecipeConfig:
    """A built-in recipe by name, or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(
            f"no recipe {name_or_path!r}: built-in recipes are {', '.join(list_recipes())}, "
            "or pass a path to a .toml file"
        )
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
    raw.setdefault("name", path.stem)
    return RecipeConfig.from_dict(raw, where=str(path))


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string such as `entropy=jsd`


def apply_overrides(cfg: RecipeConfig, overrides: list[str]) -> RecipeConfig:
    """Apply `section.key=value` overrides (values parsed as TOML, else taken as strings)."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.steps=500")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if parts == ["name"]:
            d["name"] = text
            continue
        sections = _section_types()
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(
                f"--set {key!r}: expected {', '.join(f'{s}.KEY' for s in sections)}"
            )
        section, name = parts
        if name not in d[section]:
            raise ConfigError(
                f"--set {key!r}: no such key; [{section}] has {', '.join(sorted(d[section]))}"
            )
        default = getattr(sections[section](), name)
        d[section][name] = check_value(section, name, _parse_value(text), default,
                                       f"--set {key}={text}")
    return RecipeConfig.from_dict(d, where="--set")


def _same_kind(current: Any, value: Any) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    return isinstance(value, type(current))
