"""`meg serve`: run the app under uvicorn, one process (see service.main)."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import uvicorn

from service.main import create_app
from service.settings import Settings, get_settings


def serve(models: str | Path | None = None, host: str | None = None,
          port: int | None = None) -> None:
    """Serve the bundles under `models` on host:port. None means "use settings"
    (MEG_MODELS_DIR, MEG_HOST, MEG_PORT). Blocks until SIGTERM/SIGINT, then drains."""
    base = get_settings()
    overrides = {k: v for k, v in {"models_dir": models, "host": host, "port": port}.items()
                 if v is not None}
    settings = Settings(**{**base.model_dump(), **overrides}) if overrides else base
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1,
                            log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=math.ceil(settings.grace_s))
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain, run the lifespan
    # shutdown) and then re-raises the signal to the handler that was installed before
    # it. A no-op handler there makes a graceful stop exit with status 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM,)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
