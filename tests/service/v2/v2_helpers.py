"""Shared by the V2 tests (imported as a plain module, like tests/service/svc_helpers)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import httpx

API_KEY = "v2-test-key"
AUTH = {"X-API-Key": API_KEY}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    http_url: str  # host:port, as tritonclient wants it
    grpc_url: str
    native: httpx.Client  # the native API of the same server, authenticated
