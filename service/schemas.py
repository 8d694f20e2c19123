"""Request and response bodies of the HTTP API (all of them live here).

Numbers in `inputs` are strict: finite JSON numbers only. Strings ("1.5", "NaN"), booleans,
null, NaN/Infinity literals (which Python's JSON parser accepts) are rejected with 422.
Boolean options are strict too: JSON true/false only ("yes", "on", 0, 1 are 422).
Limits that come from settings (max n, max rows, max MCMC steps) are checked by the routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
        {"model": "toy", "inputs": [[0.0, 0.0]], "target_fpr": 0.001},
    ]})

    threshold: Annotated[float | None, Field(
        None, strict=True, allow_inf_nan=False,
        description="flag scores >= this score instead of using p-values")] = None
    target_fpr: Annotated[float | None, Field(
        None, strict=True, gt=0, lt=1,
        description="target false-positive rate α: flag rows whose p-value <= α (default: "
        "the bundle's calibration.target_fpr; at least 1/(n+1) for n calibration scores)")] = None
    unknown_category: Annotated[Literal["zeros", "error"] | None, Field(
        None, description="records: a category training never saw is scored with an all-zero "
        "one-hot block and listed in `unseen` (zeros) or rejects the request (error); "
        "default: the bundle's policy")] = None
    explain: StrictBool = Field(False, description="add the features with the largest |dE/dx|")
    top_k: Annotated[int, Field(strict=True, ge=1, le=1000)] = 5
    score: Literal["energy", "knn", "energy+knn"] | None = Field(
        None, description="the score: energy E(x); knn, the distance to the nearest distinct "
        "training row; energy+knn, both combined (meg/support.py); default: the bundle's "
        "default score (its manifest's support.default_score, else energy)")

    @model_validator(mode="after")
    def _threshold_or_target_fpr(self) -> AnomalyRequest:
        if self.threshold is not None and self.target_fpr is not None:
            raise ValueError("give at most one of 'threshold' or 'target_fpr'")
        return self


class Contribution(BaseModel):
    feature: str
    gradient: float = Field(description="dE/dx in model space (summed over one-hot columns)")


class AnomalyResult(BaseModel):
    score: float = Field(description="the score named by the response's `score` (higher = "
                         "more anomalous)")
    p_value: float = Field(description="conformal p-value: (1 + #{calibration scores >= "
                           "score}) / (n + 1); small = unusual among normal data")
    percentile: float = Field(description="share (0-100) of calibration scores below the score")
    is_anomaly: bool = Field(description="p_value <= target_fpr, or score >= an explicit "
                             "threshold")
    unseen: list[str] | None = Field(
        None, description="records: features whose category training never saw (scored as an "
        "all-zero one-hot block); absent when there are none")
    explanation: list[Contribution] | None = None


class AnomalyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "events", "version": "b3ff9e93e474", "score": "energy", "target_fpr": 0.01,
         "threshold": 0.8, "results": [
             {"score": 3.2, "p_value": 0.002, "percentile": 100.0, "is_anomaly": True,
              "unseen": ["protocol"], "explanation": [{"feature": "bytes", "gradient": 2.1}]}]}]})

    model: str
    version: str
    score: str = Field(description='which score the results hold: "energy", "knn" or '
                       '"energy+knn"')
    target_fpr: float | None = Field(
        None, description="the α rows were flagged at (p_value <= α); absent when an explicit "
        "threshold was given")
    threshold: float = Field(description="the explicit threshold (flag score >= it), or, with "
                             "target_fpr, the equivalent score: rows scoring above it are flagged")
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
    score: str = Field(description='the calibrated score: "energy"')
    n: int = Field(description="calibration scores (held-out normal rows, never trained on)")
    source: str = Field(description="where the calibration rows came from")
    target_fpr: float = Field(description="the default target false-positive rate α")
    min_target_fpr: float = Field(description="1/(n+1): a smaller target can flag nothing")
    default_threshold: float | None = Field(
        description="the score equivalent to the default target: rows above it are flagged "
        "(null: the default target is below min_target_fpr)")
    percentiles: dict[str, float] = Field(description='calibration score percentiles, e.g. '
                                          '{"50": ..., "99": ...}')


class ModelDetail(ModelSummary):
    shape: list[int]
    feature_names: list[str]
    input_features: list[dict[str, Any]] | None = Field(
        None, description="record features (name, kind, categories) when the model takes records")
    unknown_category: str | None = Field(
        None, description='records: "zeros" (unseen categories scored, listed in `unseen`) or '
        '"error" (rejected); a request may override it')
    value_range: list[float] | None = None
    metrics: dict[str, Any]
    calibration: CalibrationSummary
    scores: list[str] = Field(["energy"], description="the scores /anomaly can use")
    default_score: str = Field("energy", description="the score /anomaly uses by default")
    recipe: str
    created: str
    path: str


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: list[str]


class ErrorItem(BaseModel):
    index: int | None = Field(None, description="the row (inputs/records index) at fault")
    field: str | None = None
    reason: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    details: list[ErrorItem] | None = Field(
        None, description="every problem of the request (422 validation errors and invalid "
        "rows): code, message and field above describe the first")


class ErrorBody(BaseModel):
    error: ErrorDetail
