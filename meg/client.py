"""A small typed client of meg's native HTTP API (docs/service.md), sync and async, on
httpx:

    from meg.client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as c:
        s = c.sample(16, model="digits", seed=0)          # s.samples: (16, 64) float32
        e = c.energy(s.samples, model="digits")            # e.energies: (16,)
        a = c.anomaly(records=[{...}], model="events")     # a.p_values, a.is_anomaly

`AsyncClient` has the same methods, awaited. A failed request raises `APIError` with the
server's status, error `code`, message and field; a connection failure raises
`ConnectionFailed`. Both derive from `MegClientError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from meg.results import Energies, Latents

Rows = np.ndarray | Sequence[Sequence[float]]
Records = Sequence[dict[str, Any]]


class MegClientError(Exception):
    """Base of the client's errors."""


class APIError(MegClientError):
    """The server answered with an error: HTTP `status`, the error `code` (e.g.
    "model_not_found", "wrong_dimension", "too_many_rows"), its `message`, the request
    `field` at fault, every problem in `details` (422) and `retry_after_s` (503)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 details: list[dict[str, Any]] | None = None,
                 retry_after_s: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details or []
        self.retry_after_s = retry_after_s


class ConnectionFailed(MegClientError):
    """The server could not be reached (or did not answer in time)."""


@dataclass(frozen=True)
class Samples:
    model: str
    version: str
    seed: int  # pass it back to draw the same samples
    samples: np.ndarray  # (n, data_dim) float32, model space
    latent: np.ndarray | None = None  # (n, latent_dim), when asked for
    records: list[dict[str, Any]] | None = None  # decoded rows, when asked for
    acceptance_rate: float | None = None  # with MCMC
    step_size: float | None = None  # with MCMC


@dataclass(frozen=True)
class Anomalies:
    model: str
    version: str
    score: str  # which score: "energy", "knn" or "energy+knn"
    threshold: float  # the score boundary rows were flagged at
    target_fpr: float | None  # the α of p-value flagging (None: explicit threshold)
    scores: np.ndarray  # (N,) float64, higher = more anomalous
    p_values: np.ndarray  # (N,) conformal p-values
    percentiles: np.ndarray  # (N,) 0-100 among the calibration scores
    is_anomaly: np.ndarray  # (N,) bool
    unseen: list[list[str]] = field(default_factory=list)  # records: unseen categories
    explanations: list[list[dict[str, Any]]] | None = None  # with explain=True


# --------------------------------------------------------------------------- requests


def _rows_body(inputs: Rows | None, records: Records | None,
               model: str | None) -> dict[str, Any]:
    if (inputs is None) == (records is None):
        raise ValueError("give exactly one of `inputs` (model-space rows) or `records`")
    body: dict[str, Any] = {"model": model} if model else {}
    if inputs is not None:
        # numpy goes out as is (orjson writes float32 exactly); lists unchanged, so a
        # ragged row is the server's to report, with its index
        body["inputs"] = (np.ascontiguousarray(inputs) if isinstance(inputs, np.ndarray)
                          and inputs.dtype.kind in "fiu" else
                          np.asarray(inputs).tolist() if isinstance(inputs, np.ndarray)
                          else list(inputs))
    else:
        body["records"] = list(records or [])
    return body


def _sample_body(n: int, model: str | None, seed: int | None, mcmc: dict[str, Any] | None,
                 return_latent: bool, return_records: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"n": n, "return_latent": return_latent,
                            "return_records": return_records}
    for k, v in {"model": model, "seed": seed, "mcmc": mcmc}.items():
        if v is not None:
            body[k] = v
    return body


def _anomaly_body(inputs: Rows | None, records: Records | None, model: str | None,
                  threshold: float | None, target_fpr: float | None, explain: bool,
                  top_k: int, score: str | None) -> dict[str, Any]:
    body = _rows_body(inputs, records, model)
    if score is not None:
        body["score"] = score
    if threshold is not None:
        body["threshold"] = threshold
    if target_fpr is not None:
        body["target_fpr"] = target_fpr
    if explain:
        body["explain"], body["top_k"] = True, top_k
    return body


def _encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _checked(r: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; APIError otherwise."""
    if r.is_success:
        return r.json()
    try:
        err = r.json()["error"]
        if isinstance(err, str):  # the V2 shape
            err = {"code": "error", "message": err}
    except Exception:
        err = {"code": "http_error", "message": r.text[:500] or r.reason_phrase}
    retry = r.headers.get("retry-after")
    raise APIError(r.status_code, str(err.get("code", "error")), str(err.get("message", "")),
                   err.get("field"), err.get("details"),
                   float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)


def _f32(rows: Any) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def _samples(d: dict[str, Any]) -> Samples:
    return Samples(d["model"], d["version"], int(d["seed"]), _f32(d["samples"]),
                   _f32(d["latent"]) if d.get("latent") is not None else None,
                   d.get("records"), d.get("acceptance_rate"), d.get("step_size"))


def _energies(d: dict[str, Any]) -> Energies:
    return Energies(d["model"], d["version"], _f32(d["energies"]))


def _latents(d: dict[str, Any]) -> Latents:
    return Latents(d["model"], d["version"], _f32(d["latent"]))


def _anomalies(d: dict[str, Any]) -> Anomalies:
    rows = d["results"]
    expl = [r.get("explanation", []) for r in rows] if any("explanation" in r
                                                           for r in rows) else None
    return Anomalies(
        d["model"], d["version"], str(d.get("score", "energy")), float(d["threshold"]),
        d.get("target_fpr"),
        np.array([r["score"] for r in rows], dtype=np.float64),
        np.array([r.get("p_value", np.nan) for r in rows], dtype=np.float64),
        np.array([r["percentile"] for r in rows], dtype=np.float64),
        np.array([r["is_anomaly"] for r in rows], dtype=bool),
        [r.get("unseen", []) for r in rows], expl)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


_JSON = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- clients


class Client:
    """Blocking client. `http` replaces the underlying httpx.Client (e.g. FastAPI's
    TestClient for an in-process app); it is not closed by this client."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = 60.0, http: httpx.Client | None = None):
        self._own = http is None
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        self.headers = _headers(api_key)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            if body is None:
                r = self.http.request(method, path, headers=self.headers)
            else:
                r = self.http.request(method, path, content=_encode(body),
                                      headers={**self.headers, **_JSON})
        except httpx.TransportError as e:
            raise ConnectionFailed(f"{method} {path}: {e}") from e
        return _checked(r)

    def sample(self, n: int, model: str | None = None, seed: int | None = None,
               mcmc: dict[str, Any] | None = None, return_latent: bool = False,
               return_records: bool = False) -> Samples:
        """`n` samples (POST /sample); the same seed gives the same samples."""
        return _samples(self._call("POST", "/sample", _sample_body(
            n, model, seed, mcmc, return_latent, return_records)))

    def energy(self, inputs: Rows | None = None, records: Records | None = None,
               model: str | None = None) -> Energies:
        """E(x) per row (POST /energy): model-space `inputs` or raw `records`."""
        return _energies(self._call("POST", "/energy", _rows_body(inputs, records, model)))

    def encode(self, inputs: Rows | None = None, records: Records | None = None,
               model: str | None = None) -> Latents:
        """Latent codes per row (POST /encode)."""
        return _latents(self._call("POST", "/encode", _rows_body(inputs, records, model)))

    def anomaly(self, inputs: Rows | None = None, records: Records | None = None,
                model: str | None = None, threshold: float | None = None,
                target_fpr: float | None = None, explain: bool = False,
                top_k: int = 5, score: str | None = None) -> Anomalies:
        """Scores, p-values and flags per row (POST /anomaly); `score` picks energy, knn or
        energy+knn (default: the bundle's)."""
        return _anomalies(self._call("POST", "/anomaly", _anomaly_body(
            inputs, records, model, threshold, target_fpr, explain, top_k, score)))

    def models(self) -> dict[str, Any]:
        """GET /models: {"default", "models": [...], "failed": {...}}."""
        return dict(self._call("GET", "/models"))

    def model(self, name: str) -> dict[str, Any]:
        """GET /models/{name}: one model in detail."""
        return dict(self._call("GET", f"/models/{name}"))


class AsyncClient:
    """The same methods as Client, awaited. `http` replaces the underlying
    httpx.AsyncClient (e.g. one on httpx.ASGITransport); it is not closed by this client."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = 60.0, http: httpx.AsyncClient | None = None):
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=url, timeout=timeout)
        self.headers = _headers(api_key)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own:
            await self.http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            if body is None:
                r = await self.http.request(method, path, headers=self.headers)
            else:
                r = await self.http.request(method, path, content=_encode(body),
                                            headers={**self.headers, **_JSON})
        except httpx.TransportError as e:
            raise ConnectionFailed(f"{method} {path}: {e}") from e
        return _checked(r)

    async def sample(self, n: int, model: str | None = None, seed: int | None = None,
                     mcmc: dict[str, Any] | None = None, return_latent: bool = False,
                     return_records: bool = False) -> Samples:
        return _samples(await self._call("POST", "/sample", _sample_body(
            n, model, seed, mcmc, return_latent, return_records)))

    async def energy(self, inputs: Rows | None = None, records: Records | None = None,
                     model: str | None = None) -> Energies:
        return _energies(await self._call("POST", "/energy",
                                          _rows_body(inputs, records, model)))

    async def encode(self, inputs: Rows | None = None, records: Records | None = None,
                     model: str | None = None) -> Latents:
        return _latents(await self._call("POST", "/encode", _rows_body(inputs, records, model)))

    async def anomaly(self, inputs: Rows | None = None, records: Records | None = None,
                      model: str | None = None, threshold: float | None = None,
                      target_fpr: float | None = None, explain: bool = False,
                      top_k: int = 5, score: str | None = None) -> Anomalies:
        return _anomalies(await self._call("POST", "/anomaly", _anomaly_body(
            inputs, records, model, threshold, target_fpr, explain, top_k, score)))

    async def models(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/models"))

    async def model(self, name: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/models/{name}"))
