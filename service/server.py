"""`meg serve`: run the app under uvicorn, one process (see service.main)."""

from __future__ import annotations

import errno
import math
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from service.main import create_app
from service.settings import Settings, get_settings

EXIT_CANNOT_LISTEN = 2


def bind(host: str, port: int) -> socket.socket:
    """The listening address, bound now (uvicorn starts listening on it once the models
    are loaded). A port in use is found here, in milliseconds, instead of after the
    start-up load: SystemExit(2) with a clear message."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = info[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        print(f"meg serve: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CANNOT_LISTEN) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        why = "the port is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        print(f"meg serve: cannot listen on {host}:{port}: {why}", file=sys.stderr)
        raise SystemExit(EXIT_CANNOT_LISTEN) from None
    sock.set_inheritable(True)
    return sock


def serve(models: str | Path | None = None, host: str | None = None,
          port: int | None = None) -> None:
    """Serve the bundles under `models` on host:port. None means "use settings"
    (MEG_MODELS_DIR, MEG_HOST, MEG_PORT). Blocks until SIGTERM/SIGINT, then lets every
    in-flight request finish (up to the graceful limit, never below the request
    timeout). Exits with status 2 at once when the address cannot be bound."""
    base = get_settings()
    overrides = {k: v for k, v in {"models_dir": models, "host": host, "port": port}.items()
                 if v is not None}
    settings = Settings(**{**base.model_dump(), **overrides}) if overrides else base
    sock = bind(settings.host, settings.port)  # before anything slow
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1,
                            log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=math.ceil(settings.grace_s))
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain, run the lifespan
    # shutdown) and then re-raises the signal to the handler that was installed before
    # it. A no-op handler there makes a graceful stop exit with status 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM,)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
