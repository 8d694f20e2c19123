"""The Open Inference Protocol (KServe V2) on top of the engine, independent of transport:
which V2 models exist, the tensors they declare, and running one inference request.
REST (service/v2/rest.py) and gRPC (service/v2/grpc_server.py) only decode and encode tensors.

Model naming: every loaded bundle NAME serves five V2 models,

    NAME.energy   x FP32 [-1, D]                 -> energy FP32 [-1]
    NAME.generate z FP32 [-1, L]                 -> x FP32 [-1, D]
    NAME.encode   x FP32 [-1, D]                 -> z FP32 [-1, L]
    NAME.anomaly  x FP32 [-1, D]                 -> score, p_value, percentile FP32 [-1],
                                                    is_anomaly BOOL [-1]
    NAME.sample   n INT64 [1], seed INT64 [1]    -> x FP32 [-1, D], z FP32 [-1, L]

and NAME alone is NAME.energy. D = the bundle's data_dim (model space), L = latent_dim.
`seed` is optional (a random one is drawn and returned in the response parameter `seed`).
Request parameters: anomaly takes `score` (energy, knn or energy+knn; default the
bundle's), `threshold` (flag score >= it) or `target_fpr` (flag conformal p-value <= it;
default the bundle's) and answers them in the response parameters; sample takes
`mcmc_steps` (latent MALA steps, default 0 = none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine import Engine
from service.engine.errors import InvalidInput, ModelNotFound
from service.engine.models import LoadedModel
from service.engine.results import MCMCParams

SERVER_NAME = "meg"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "meg_onnxruntime"
OPS = ("energy", "generate", "encode", "anomaly", "sample")

# V2 datatype <-> numpy dtype (BYTES is not served: no meg tensor is a string).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_F32_MAX = float(np.finfo(np.float32).max)
_DTYPE_NAMES = {dt: name for name, dt in DATATYPES.items()}

def datatype_of(a: np.ndarray) -> str:
    return _DTYPE_NAMES[np.dtype(a.dtype).newbyteorder("=")]


@dataclass(frozen=True)
class TensorSpec:
    """A declared tensor: -1 in `shape` is any size (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Tensor:
    """A tensor of a request or response: data is shaped, native byte order."""

    name: str
    data: np.ndarray

    @property
    def datatype(self) -> str:
        return datatype_of(self.data)


@dataclass(frozen=True)
class V2Model:
    """One V2 model: an operation of one bundle, with its declared tensors."""

    name: str
    op: str
    bundle: LoadedModel
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    optional_inputs: frozenset[str] = frozenset()

    @property
    def version(self) -> str:
        return self.bundle.version

    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata body."""
        return {"name": self.name, "versions": [self.version], "platform": PLATFORM,
                "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}


@dataclass(frozen=True)
class InferResult:
    model: V2Model
    outputs: list[Tensor]
    parameters: dict[str, Any]


def _specs(bundle: LoadedModel, op: str) -> tuple[tuple[TensorSpec, ...],
                                                   tuple[TensorSpec, ...]]:
    d, lat = bundle.data_dim, bundle.latent_dim
    x = TensorSpec("x", "FP32", (-1, d))
    z = TensorSpec("z", "FP32", (-1, lat))
    if op == "energy":
        return (x,), (TensorSpec("energy", "FP32", (-1,)),)
    if op == "generate":
        return (z,), (x,)
    if op == "encode":
        return (x,), (z,)
    if op == "anomaly":
        return (x,), (TensorSpec("score", "FP32", (-1,)), TensorSpec("p_value", "FP32", (-1,)),
                      TensorSpec("percentile", "FP32", (-1,)),
                      TensorSpec("is_anomaly", "BOOL", (-1,)))
    assert op == "sample"
    return (TensorSpec("n", "INT64", (1,)), TensorSpec("seed", "INT64", (1,))), (x, z)


def resolve(engine: Engine, name: str, version: str = "") -> V2Model:
    """The V2 model `name` (see the module docstring for naming); `version`, when given,
    must be the loaded bundle's version. Raises ModelNotFound / InvalidInput."""
    base, _, op = name.rpartition(".")
    if name in engine.registry.models or not (base and op in OPS):
        bundle, op = engine.resolve(name), "energy"
    else:
        bundle = engine.resolve(base)
    if version and version != bundle.version:
        raise ModelNotFound("model_version_not_found", f"model {name!r} has no version "
                            f"{version!r} (loaded: {bundle.version})", "model_version")
    inputs, outputs = _specs(bundle, op)
    optional = frozenset({"seed"}) if op == "sample" else frozenset()
    return V2Model(name, op, bundle, inputs, outputs, optional)


def model_names(engine: Engine) -> list[str]:
    """Every V2 model name the loaded bundles serve."""
    return [n for b in sorted(engine.registry.models)
            for n in (b, *(f"{b}.{op}" for op in OPS))]


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


# --------------------------------------------------------------------------- inference


def _inputs_checked(model: V2Model, inputs: list[Tensor]) -> dict[str, np.ndarray]:
    """Inputs by name, checked against the declared tensors (names, rank, fixed dims)."""
    by_name: dict[str, np.ndarray] = {}
    declared = {t.name: t for t in model.inputs}
    for t in inputs:
        spec = declared.get(t.name)
        if spec is None:
            raise InvalidInput("unknown_input", f"model {model.name!r} has no input "
                               f"{t.name!r} (inputs: {', '.join(declared)})", t.name)
        if t.name in by_name:
            raise InvalidInput("duplicate_input", f"input {t.name!r} given twice", t.name)
        shape = t.data.shape
        if len(shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)):
            raise InvalidInput("wrong_shape", f"input {t.name!r} has shape {list(shape)}; "
                               f"model {model.name!r} expects {list(spec.shape)} "
                               "(-1: any size)", t.name)
        if spec.shape[0] == -1 and shape[0] == 0:
            raise InvalidInput("empty_input", f"input {t.name!r} has no rows", t.name)
        by_name[t.name] = t.data
    missing = [n for n in declared if n not in by_name and n not in model.optional_inputs]
    if missing:
        raise InvalidInput("missing_input", f"model {model.name!r} needs input "
                           f"{missing[0]!r}", missing[0])
    return by_name


def _floats(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype.kind != "f":
        raise InvalidInput("wrong_datatype", f"input {name!r} is {datatype_of(a)}; send FP32 "
                           "(FP16 and FP64 are converted)", name)
    return a


def _integer(a: np.ndarray, name: str, lo: int, hi: int) -> int:
    if a.dtype.kind not in "iu":
        raise InvalidInput("wrong_datatype", f"input {name!r} is {datatype_of(a)}; send an "
                           "integer type (INT64)", name)
    v = int(a.reshape(-1)[0])
    if not lo <= v < hi:
        raise InvalidInput("out_of_range", f"input {name!r}={v} is outside [{lo}, {hi})", name)
    return v


def _param_float(params: dict[str, Any], key: str) -> float | None:
    v = params.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise InvalidInput("invalid_parameter", f"parameter {key!r} must be a number", key)
    try:
        f = float(v)
    except ValueError:
        raise InvalidInput("invalid_parameter", f"parameter {key!r} must be a number",
                           key) from None
    if not np.isfinite(f):
        raise InvalidInput("invalid_parameter", f"parameter {key!r} must be finite", key)
    return f


async def infer(engine: Engine, model: V2Model, inputs: list[Tensor],
                parameters: dict[str, Any]) -> InferResult:
    """Run one V2 inference request: all declared outputs, in declared order."""
    by_name = _inputs_checked(model, inputs)
    bundle, op = model.bundle, model.op
    params: dict[str, Any] = {}
    outs: dict[str, np.ndarray]
    if op == "sample":
        n = _integer(by_name["n"], "n", 1, engine.settings.max_samples + 1)
        seed = (_integer(by_name["seed"], "seed", 0, 2**63) if "seed" in by_name else None)
        steps = parameters.get("mcmc_steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise InvalidInput("invalid_parameter", "parameter 'mcmc_steps' must be an "
                               "integer >= 0", "mcmc_steps")
        mcmc = MCMCParams(steps=steps) if steps else None
        s = await engine.sample(bundle, n, seed, mcmc)
        outs = {"x": s.samples, "z": s.latent}
        params["seed"] = s.seed
    elif op == "generate":
        z = _latent_rows(engine, _floats(by_name["z"], "z"))
        outs = {"x": _finite_out(await engine.infer(bundle, "generate", z, engine.deadline()),
                                 "samples")}
    else:
        rows = engine.rows(bundle, _floats(by_name["x"], "x"))
        if op == "energy":
            outs = {"energy": (await engine.energy(bundle, rows)).energies}
        elif op == "encode":
            outs = {"z": (await engine.encode(bundle, rows)).latent}
        else:
            score = parameters.get("score")
            if score is not None and not isinstance(score, str):
                raise InvalidInput("invalid_parameter", "parameter 'score' must be a string "
                                   "(energy, knn or energy+knn)", "score")
            a = await engine.anomaly(bundle, rows,
                                     threshold=_param_float(parameters, "threshold"),
                                     target_fpr=_param_float(parameters, "target_fpr"),
                                     score=score)
            assert a.p_values is not None  # the engine always computes them
            outs = {"score": a.scores, "p_value": a.p_values, "percentile": a.percentiles,
                    "is_anomaly": a.flags}
            params["score"] = a.score_name
            params["threshold"] = a.threshold
            if a.target_fpr is not None:
                params["target_fpr"] = a.target_fpr
    tensors = [Tensor(spec.name, np.ascontiguousarray(outs[spec.name],
                                                      dtype=DATATYPES[spec.datatype]))
               for spec in model.outputs if spec.name in outs]
    return InferResult(model, tensors, params)


def _latent_rows(engine: Engine, z: np.ndarray) -> np.ndarray:
    """Latent rows checked like the engine checks data rows (count, float32 range); the
    declared shape already fixed their width to latent_dim."""
    if len(z) > engine.settings.max_rows:
        raise InvalidInput("too_many_rows", f"{len(z)} rows; at most "
                           f"{engine.settings.max_rows} per request", "z")
    if not np.all(np.isfinite(z)) or np.any(np.abs(z.astype(np.float64)) > _F32_MAX):
        raise InvalidInput("out_of_range", "z must be finite float32 values", "z")
    return np.ascontiguousarray(z, dtype=np.float32)


def _finite_out(a: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise InvalidInput("non_finite_output", f"the model's {what} overflowed for these "
                           "inputs (values too large)", "inputs")
    return a
