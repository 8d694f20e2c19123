"""Server configuration: environment variables with the `MEG_` prefix (or a `.env` file).

`get_settings()` returns the process-wide singleton; tests and `service.server.serve`
build their own `Settings(...)` and hand it to `service.main.create_app`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the model server. Documented (with defaults) in docs/service.md."""

    model_config = SettingsConfigDict(env_prefix="MEG_", env_file=".env", extra="ignore")

    models_dir: Path = Field(Path("./models"), description="directory of bundles")
    default_model: str | None = Field(
        None, description='model used when a request names none (default: "digits" if loaded, '
        "else the first loaded)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ort_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = ORT default)")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads (0 = leave torch's)")
    inference_workers: int = Field(4, ge=1, description="threads running inference off the loop")
    max_batch_size: int = Field(256, ge=1)
    max_delay_ms: float = Field(2.0, ge=0)
    queue_size: int = Field(1024, ge=1, description="max queued requests per model and op")
    request_timeout_s: float = Field(30.0, gt=0)
    max_samples: int = Field(10_000, ge=1)
    max_mcmc_steps: int = Field(1000, ge=1)
    max_rows: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # A plain string, split on commas: pydantic-settings would parse a list field as JSON.
    api_keys: str = Field("", description="comma-separated API keys; empty = no auth")
    log_level: str = "INFO"
    poll_interval_s: float = Field(2.0, gt=0)
    graceful_timeout_s: float = Field(20.0, ge=0, description="uvicorn graceful shutdown limit")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

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
