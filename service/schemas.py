"""Request and response bodies of the HTTP API (all of them live here).

Numbers in `inputs` are strict: finite JSON numbers only. Strings ("1.5", "NaN"), booleans,
null, NaN/Infinity literals (which Python's JSON parser accepts) are rejected with 422.
Boolean options are strict too: JSON true/false only ("yes", "on", 0, 1 are 422).
Limits that come from settings (max n, max rows, max MCMC steps) are checked by the routes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Row = Annotated[list[FiniteFloat], Field(min_length=1)]
ModelName = Annotated[str | None, Field(
    None, description="bundle name (default: the server's default model)", examples=["digits"])]

_STRICT = ConfigDict(extra="forbid")


class _Rows(BaseModel):
    """Exactly one of `inputs` (model-space rows) or `records` (named raw features)."""

    model_config = _STRICT

    model: ModelName = None
    inputs: Annotated[list[Row] | None, Field(
        None, min_length=1, description="rows of data_dim finite numbers (model space)")] = None
    records: Annotated[list[dict[str, Any]] | None, Field(
        None, min_length=1,
        description="raw records {feature: value}; only for models with preprocessing")] = None

    @model_validator(mode="after")
    def _one_of(self) -> _Rows:
        if (self.inputs is None) == (self.records is None):
            raise ValueError("give exactly one of 'inputs' or 'records'")
        return self


# --------------------------------------------------------------------------- /sample


class MCMCOptions(BaseModel):
    """Latent-space MALA refinement: U(z) = E(G(z)) / temperature (+ ½‖z‖² with prior)."""

    model_config = _STRICT

    steps: Annotated[int, Field(strict=True, ge=1, description="MALA steps (<= MEG_MAX_MCMC_STEPS)")] = 50
    step_size: Annotated[float, Field(strict=True, gt=0, le=100, allow_inf_nan=False)] = 0.01
    temperature: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] = 1.0
    adapt: StrictBool = Field(False, description="adapt the step size toward 0.574 acceptance during burn-in")
    prior: StrictBool = Field(True, description="add the N(0, I) prior ½‖z‖² to the latent energy")


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "digits", "n": 4, "seed": 0},
        {"model": "digits", "n": 16, "seed": 1, "mcmc": {"steps": 50, "step_size": 0.01}},
    ]})

    model: ModelName = None
    n: Annotated[int, Field(strict=True, ge=1, description="number of samples (<= MEG_MAX_SAMPLES)")]
    seed: Annotated[int | None, Field(
        None, strict=True, ge=0, lt=2**63, description="same seed, same samples; random when absent")] = None
    mcmc: MCMCOptions | None = None
    return_latent: StrictBool = False
    return_records: StrictBool = Field(
        False, description="tabular models: also decode rows to records (inverse scaling, "
        "argmax of one-hot blocks)")


class SampleResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "toy", "version": "3f2a9c1d0b7e", "seed": 0, "samples": [[0.12, -1.9]]}]})

    model: str
    version: str
    seed: int = Field(description="the seed used (pass it back to reproduce)")
    samples: list[list[float]] = Field(description="model-space rows (n, data_dim)")
    latent: list[list[float]] | None = None
    records: list[dict[str, Any]] | None = None
    acceptance_rate: float | None = None
    step_size: float | None = None


# --------------------------------------------------------------------------- /energy, /encode


class EnergyRequest(_Rows):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "toy", "inputs": [[0.0, 0.0], [1.5, -2.0]]},
        {"model": "events", "records": [{"bytes": 120.5, "duration": 0.3, "protocol": "tcp"}]},
    ]})


class EnergyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "toy", "version": "3f2a9c1d0b7e", "energies": [0.41, 2.73]}]})

    model: str
    version: str
    energies: list[float]


class EncodeRequest(_Rows):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "toy", "inputs": [[0.0, 0.0]]}]})


class EncodeResponse(BaseModel):
    model: str
    version: str
    latent: list[list[float]]


# --------------------------------------------------------------------------- /anomaly


class AnomalyRequest(_Rows):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "events", "records": [{"bytes": 950.0, "duration": 0.1, "protocol": "udp"}],
         "explain": True, "top_k": 3},
        {"model": "toy", "inputs": [[0.0, 0.0]], "contamination": 0.01},
    ]})

    threshold: Annotated[float | None, Field(
        None, strict=True, allow_inf_nan=False, description="flag scores >= this energy")] = None
    contamination: Annotated[float | None, Field(
        None, strict=True, gt=0, lt=1,
        description="share of normal data to flag (default: the bundle's)")] = None
    explain: StrictBool = Field(False, description="add the features with the largest |dE/dx|")
    top_k: Annotated[int, Field(strict=True, ge=1, le=1000)] = 5

    @model_validator(mode="after")
    def _threshold_or_contamination(self) -> AnomalyRequest:
        if self.threshold is not None and self.contamination is not None:
            raise ValueError("give at most one of 'threshold' or 'contamination'")
        return self


class Contribution(BaseModel):
    feature: str
    gradient: float = Field(description="dE/dx in model space (summed over one-hot columns)")


class AnomalyResult(BaseModel):
    score: float = Field(description="the energy (higher = more anomalous)")
    percentile: float = Field(description="rank among the calibration energies of normal data")
    is_anomaly: bool
    explanation: list[Contribution] | None = None


class AnomalyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "events", "version": "b3ff9e93e474", "threshold": 0.8, "results": [
            {"score": 3.2, "percentile": 100.0, "is_anomaly": True,
             "explanation": [{"feature": "bytes", "gradient": 2.1}]}]}]})

    model: str
    version: str
    threshold: float
    results: list[AnomalyResult]


# --------------------------------------------------------------------------- /models, health


class ModelSummary(BaseModel):
    name: str
    version: str
    kind: str
    data_dim: int
    latent_dim: int
    providers: list[str]
    device: str
    status: str


class ModelList(BaseModel):
    default: str | None
    models: list[ModelSummary]
    failed: dict[str, str] = Field(description="bundles that did not load: name -> reason")


class CalibrationSummary(BaseModel):
    n: int
    contamination: float
    default_threshold: float
    percentiles: dict[str, float] = Field(description='e.g. {"50": ..., "95": ...}')


class ModelDetail(ModelSummary):
    shape: list[int]
    feature_names: list[str]
    input_features: list[dict[str, Any]] | None = Field(
        None, description="record features (name, kind, categories) when the model takes records")
    value_range: list[float] | None = None
    metrics: dict[str, Any]
    calibration: CalibrationSummary
    recipe: str
    created: str
    path: str


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: list[str]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
