"""The serving engine: loaded models, batching, admission and the operations, with no
protocol types. Front-ends (service/api.py for HTTP) call it and map its errors."""

from service.engine.engine import Engine
from service.engine.errors import (
    DeadlineExceeded,
    EngineError,
    InvalidInput,
    ModelNotFound,
    Unavailable,
)

__all__ = ["DeadlineExceeded", "Engine", "EngineError", "InvalidInput", "ModelNotFound",
           "Unavailable"]
