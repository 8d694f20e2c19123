"""Server configuration: environment variables with the `MEG_` prefix (or a `.env` file).

`get_settings()` returns the process-wide singleton; tests and `service.server.serve`
build their own `Settings(...)` and hand it to `service.main.create_app`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the model server. Documented (with defaults) in docs/service.md."""

    model_config = SettingsConfigDict(env_prefix="MEG_", env_file=".env", extra="ignore")

    models_dir: Path = Field(Path("./models"), description="directory of bundles")
    bundle_key: SecretStr | None = Field(
        None, description="HMAC-SHA256 key (MEG_BUNDLE_KEY): when set, only bundles whose "
        "manifest is signed with it are loaded; empty = no signature required")
    default_model: str | None = Field(
        None, description='model used when a request names none (unset: chosen once, "digits" '
        "if loaded, else the first loaded by name; bundles appearing later never change it)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 0 = auto (meg.threads): the CPUs this process may use, cgroup quota and affinity included.
    ort_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = auto)")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads (0 = auto)")
    inference_workers: int = Field(
        4, ge=1, description="threads running batched feed-forward inference (ONNX)")
    heavy_workers: int = Field(
        2, ge=1, description="threads running torch work outside the MCMC loop (explain, "
        "render, unbatched MCMC): separate from inference_workers, so cheap calls never "
        "wait behind them")
    max_batch_size: int = Field(256, ge=1)
    max_delay_ms: float = Field(2.0, ge=0)
    inline_inference_ms: float = Field(
        0.5, ge=0, description="a batch whose inference is measured to take under this runs on "
        "the event loop instead of a pool thread, whose hand-off costs more (0: always the pool)")
    queue_size: int = Field(1024, ge=1, description="max queued requests per model and op")
    mcmc_batching: bool = Field(
        True, description="continuous batching of MCMC chains across requests (one MALA "
        "loop per model); off: each request runs alone in the heavy pool")
    mcmc_max_chains: int = Field(4096, ge=1, description="chains in one batched MALA step")
    mcmc_queue_size: int = Field(
        256, ge=1, description="MCMC requests running or waiting (per model with batching, "
        "in total without); beyond it 503 + Retry-After")
    explain_concurrency: int = Field(2, ge=1, description="/anomaly explain calls running")
    explain_queue_size: int = Field(64, ge=0, description="explain calls waiting")
    render_concurrency: int = Field(1, ge=1, description="/sample.png renders running")
    render_queue_size: int = Field(16, ge=0, description="renders waiting")
    request_timeout_s: float = Field(30.0, gt=0)
    body_timeout_s: float = Field(
        10.0, gt=0, description="time to receive a whole request body; then 408")
    max_samples: int = Field(10_000, ge=1)
    max_mcmc_steps: int = Field(1000, ge=1)
    max_rows: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # A plain string, split on commas: pydantic-settings would parse a list field as JSON.
    api_keys: str = Field("", description="comma-separated API keys; empty = no auth")
    log_level: str = "INFO"
    poll_interval_s: float = Field(2.0, gt=0)
    graceful_timeout_s: float = Field(
        0.0, ge=0, description="uvicorn graceful-shutdown limit (`meg serve`); 0 (default) = "
        "request_timeout_s + 5; never below request_timeout_s, so in-flight requests always "
        "finish")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(0, ge=0, le=65535, description="Open Inference Protocol (V2) gRPC "
                           "port on `host`, beside HTTP in the same process; 0 = off")

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @model_validator(mode="after")
    def _grace_covers_requests(self) -> Settings:
        if self.graceful_timeout_s == 0:
            self.graceful_timeout_s = self.request_timeout_s + 5.0
        elif self.graceful_timeout_s < self.request_timeout_s:
            raise ValueError(f"graceful_timeout_s ({self.graceful_timeout_s}) must be >= "
                             f"request_timeout_s ({self.request_timeout_s}): a shorter grace "
                             "cuts in-flight requests off with a plain-text 500")
        return self

    @property
    def grace_s(self) -> float:
        """The graceful-shutdown limit in seconds (0 replaced by its default)."""
        return self.graceful_timeout_s or self.request_timeout_s + 5.0

    @property
    def bundle_key_bytes(self) -> bytes | None:
        key = self.bundle_key.get_secret_value() if self.bundle_key else ""
        return key.encode() if key else None

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def batching_enabled(self) -> bool:
        return self.max_batch_size > 1 and self.max_delay_ms > 0


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
