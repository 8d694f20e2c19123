"""Where the time of a single-row /energy request goes: meg against a bare endpoint over
the same ONNX Runtime session (a report, not a test; nothing is written).

    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_energy.py --bundle models/digits

Both apps are driven in-process by `--concurrency` httpx clients over ASGITransport (no
sockets: uvicorn and the network are out of the picture for both), each sending
single-row /energy requests back to back:

* meg: `create_app()` with its defaults (request middleware, JSON access log at INFO,
  dynamic batching with MEG_MAX_DELAY_MS, inference in the thread pool);
* bare: a FastAPI app with one route that parses the body with orjson, runs the same ORT
  session on the event loop and answers with orjson.

1. Profile: one run of each under pyinstrument (statistical, the event-loop thread).
   Every sample is put in one component by the frames on its stack (the most specific
   wins: orjson called by the route is orjson, starlette called by the middleware's
   route lookup is the lookup). Printed as ms of loop time per request and as a share
   of the server's loop time (the in-process client's own share is shown apart). The
   machine is shared, so compare shares, not absolute numbers.
2. Latency: meg's own histograms (request duration, queue wait, ORT call, batch size).
3. Ablations: throughput of meg variants (heap not frozen, access log off, batching off, without the
   request middleware) and of the bare app, alternated over `--rounds` rounds so that a
   change in machine load hits all of them alike; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client.parser import text_string_to_metric_families
from pyinstrument import Profiler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meg import bundle as B  # noqa: E402
from service.main import create_app  # noqa: E402
from service.middleware import RequestMiddleware  # noqa: E402
from service.settings import Settings  # noqa: E402

# ----------------------------------------------------------------------------- components


def _in(*parts: str) -> Callable[[str, str], bool]:
    return lambda func, file: any(p in file for p in parts)


def _funcs(file_part: str, *names: str) -> Callable[[str, str], bool]:
    return lambda func, file: file_part in file and func in names


def _builtin(*names: str) -> Callable[[str, str], bool]:
    return lambda func, file: file == "<built-in>" and func in names


# (component, predicate on (function, file) of any frame of the sample's stack), most
# specific first: a sample goes to the first component one of its frames matches.
COMPONENTS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("ORT session.run (on the loop)", _in("onnxruntime")),
    ("orjson (parse, serialise)", _builtin("dumps", "loads")),
    ("access log + request id", _in("/logging/", "service/logs.py", "/uuid.py")),
    ("metrics (prometheus_client)", _in("prometheus_client")),
    ("JSON parse (stdlib json)", _in("/json/decoder.py", "/json/scanner.py")),
    ("pydantic validation", _in("pydantic", "fastapi/_compat")),
    ("executor hop (run_in_executor, wake-up)",
     lambda f, file: "concurrent/futures" in file or file.endswith("/threading.py")
     or f in ("run_in_executor", "SimpleQueue.put", "call_soon_threadsafe", "_chain_future",
              "_call_set_state", "_copy_future_state", "_set_state", "wrap_future",
              "_write_to_self", "_read_from_self", "_process_self_data")),
    ("batcher (queue, futures, timer)", _in("service/engine/batching.py")),
    ("engine (resolve, rows, numpy)", _in("service/engine/", "/numpy/")),
    ("route code (service/api.py)", _in("service/api.py")),
    ("API-key check (auth)", _in("service/auth.py")),
    ("middleware: route lookup", _funcs("service/middleware.py", "_route", "_routes",
                                        "_flatten", "_needs_key")),
    ("middleware: body read + replay", _funcs("service/middleware.py", "_read_body",
                                              "_read_chunks", "replay", "_as_json_scope",
                                              "_is_json")),
    ("sync code sent to a thread (anyio run_sync)", _in("/anyio/")),
    ("FastAPI dependencies (DI)", _in("fastapi/dependencies")),
]
# The rest goes to the layer of its innermost frame: these layers nest (the client calls
# the app in-process; Starlette's error middleware wraps the request middleware, which
# wraps the router), so "any frame" would credit the outermost.
FRAMEWORK = "FastAPI/Starlette (routing, request, response)"
LAYERS: list[tuple[str, Callable[[str, str], bool]]] = [
    (FRAMEWORK, lambda f, file: "fastapi/" in file or "starlette/" in file
     or ("service/middleware.py" in file and f in ("route_handler", "json"))),
    ("middleware: other (ASGI wrapper, send)", _in("service/middleware.py")),
    ("bare route (orjson + numpy + ORT)", _funcs("profile_energy.py", "bare_energy")),
    ("client (httpx load generator)", _in("httpx", "httpcore", "h11", "profile_energy.py")),
    ("asyncio event loop", _in("/asyncio/", "selectors.py")),
]
IDLE = "idle (loop waits: ORT in a worker thread, batch timer)"
CLIENT = "client (httpx load generator)"


def classify(stack: list[str]) -> str:
    frames = []
    for ident in stack[1:]:  # [0] is the thread
        func, file, *_ = ident.split("\x00")
        frames.append((func, file))
    if frames and frames[-1][1] == "<built-in>" and frames[-1][0] in ("poll", "select"):
        return IDLE
    for name, pred in COMPONENTS:
        if any(pred(func, file) for func, file in frames):
            return name
    for func, file in reversed(frames):
        for name, pred in LAYERS:
            if pred(func, file):
                return name
    return "other"


@dataclass
class Profile:
    seconds: dict[str, float]
    requests: int


def shares_table(profiles: dict[str, Profile]) -> str:
    names = [n for n, _ in COMPONENTS + LAYERS] + ["other", IDLE]
    head = f"{'component':52s}" + "".join(f"{k + ' ms/req':>14s}{k + ' %':>9s}"
                                          for k in profiles)
    lines = [head, "-" * len(head)]
    server = {k: sum(v for n, v in p.seconds.items() if n not in (CLIENT, IDLE))
              for k, p in profiles.items()}
    rows = sorted(names, key=lambda n: -max(p.seconds.get(n, 0) for p in profiles.values()))
    for n in rows:
        if not any(p.seconds.get(n) for p in profiles.values()):
            continue
        cells = ""
        for k, p in profiles.items():
            s = p.seconds.get(n, 0.0)
            share = "" if n in (CLIENT, IDLE) else f"{100 * s / server[k]:.1f}"
            cells += f"{1000 * s / p.requests:14.3f}{share:>9s}"
        lines.append(f"{n:52s}{cells}")
    lines.append("-" * len(head))
    lines.append(f"{'server loop time (all but client and idle)':52s}" + "".join(
        f"{1000 * server[k] / p.requests:14.3f}{'100.0':>9s}" for k, p in profiles.items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the apps


def bare_app(session: Any, input_name: str) -> FastAPI:
    """The bare endpoint: one route, orjson in and out, the ORT call on the loop."""
    app = FastAPI()

    @app.post("/energy")
    async def bare_energy(request: Request) -> Response:
        body = orjson.loads(await request.body())
        x = np.asarray(body["inputs"], dtype=np.float32)  # (1, d)
        e = session.run(None, {input_name: x})[0]  # (1,)
        return Response(orjson.dumps({"energies": e}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    return app


@contextlib.asynccontextmanager
async def serving(app: FastAPI, freeze: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (its lifespan run directly, so do here what meg's middleware does
    once startup completes under a server: freeze the heap, for meg and bare alike)."""
    async with app.router.lifespan_context(app):
        if freeze:
            gc.collect(1)
            gc.freeze()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meg.bench",
                                     timeout=60) as c:
            try:
                yield c
            finally:
                gc.unfreeze()


def meg_app(bundle: Path, **overrides: Any) -> FastAPI:
    strip_middleware = overrides.pop("strip_middleware", False)
    settings = Settings(models_dir=bundle, **{"log_level": "INFO", **overrides})
    app = create_app(settings)
    if strip_middleware:  # before the first request builds the middleware stack
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestMiddleware]
    return app


# ----------------------------------------------------------------------------- load


@dataclass
class Run:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies, q))


async def drive(client: httpx.AsyncClient, body: bytes, n: int, concurrency: int) -> Run:
    headers = {"content-type": "application/json"}
    latencies: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            r = await client.post("/energy", content=body, headers=headers)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"/energy answered {r.status_code}: {r.text[:300]}")

    per = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in per))
    return Run(n, time.perf_counter() - t0, latencies)


def metric_sums(text: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("endpoint", "/energy") == "/energy" and s.labels.get("op", "energy") == "energy":
                out[s.name] += float(s.value)
    return out


# ----------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> None:
    bundle = Path(args.bundle)
    manifest = B.read_manifest(bundle, verify=False)
    lo, hi = manifest.data.value_range or (0.0, 1.0)
    row = np.random.default_rng(0).uniform(lo, hi, manifest.data.dim)
    body = orjson.dumps({"inputs": [row.tolist()]})
    n, conc = args.requests, args.concurrency

    print(f"bundle {bundle} ({manifest.data.dim} features), {n} single-row requests, "
          f"{conc} concurrent in-process clients, cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f}", flush=True)

    # ---- 1. profiles
    profiles: dict[str, Profile] = {}
    meg = meg_app(bundle)
    async with serving(meg) as c:
        await drive(c, body, min(n, 500), conc)  # warm-up (also loads lazily built state)
        before = metric_sums((await c.get("/metrics")).text)
        prof = Profiler(interval=args.interval, async_mode="disabled")
        prof.start()
        run_meg = await drive(c, body, n, conc)
        prof.stop()
        after = metric_sums((await c.get("/metrics")).text)
        session = meg.state.engine.registry.models[bundle.name].sessions["energy"]
    profiles["meg"] = _profile(prof, n, args.detail)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}

    input_name = session.get_inputs()[0].name
    bare = bare_app(session, input_name)
    async with serving(bare) as c:
        await drive(c, body, min(n, 500), conc)
        prof = Profiler(interval=args.interval, async_mode="disabled")
        prof.start()
        run_bare = await drive(c, body, n, conc)
        prof.stop()
    profiles["bare"] = _profile(prof, n, args.detail)

    print("\n1. Event-loop time per request, by component (pyinstrument, "
          f"interval {args.interval * 1000:g} ms; profiled runs: meg {run_meg.rps:.0f} req/s, "
          f"bare {run_bare.rps:.0f} req/s)\n")
    print(shares_table(profiles))

    # ---- 2. meg's own latency histograms over the profiled run
    reqs = delta.get("meg_request_duration_seconds_count", 0.0) or 1.0
    batches = delta.get("meg_inference_duration_seconds_count", 0.0) or 1.0
    print("\n2. meg latency over the profiled run (its own histograms, means)\n")
    print(f"  request (middleware to last byte)  {1000 * delta.get('meg_request_duration_seconds_sum', 0) / reqs:8.3f} ms")
    print(f"  queue wait before a batch runs     {1000 * delta.get('meg_queue_wait_seconds_sum', 0) / reqs:8.3f} ms")
    print(f"  ORT call (one batch, worker thread) {1000 * delta.get('meg_inference_duration_seconds_sum', 0) / batches:7.3f} ms")
    print(f"  rows per batch                     {delta.get('meg_batch_size_sum', 0) / batches:8.1f}")
    print(f"  client-side p50 / p99              {run_meg.pct(50):8.3f} / {run_meg.pct(99):.3f} ms "
          f"(bare {run_bare.pct(50):.3f} / {run_bare.pct(99):.3f} ms)")

    # ---- 3. ablations, alternated
    variants: dict[str, tuple[Callable[[], FastAPI], bool]] = {
        "meg (defaults)": (lambda: meg_app(bundle), True),
        "meg, heap not frozen (before the fix)": (lambda: meg_app(bundle), False),
        "meg, access log off (WARNING)": (lambda: meg_app(bundle, log_level="WARNING"), True),
        "meg, batching off (MAX_DELAY_MS=0)": (lambda: meg_app(bundle, max_delay_ms=0), True),
        "meg, no request middleware": (lambda: meg_app(bundle, strip_middleware=True), True),
        "bare": (lambda: bare_app(session, input_name), True),
    }
    runs: dict[str, list[Run]] = defaultdict(list)
    for _ in range(args.rounds):
        for name, (make, freeze) in variants.items():
            async with serving(make(), freeze) as c:
                await drive(c, body, min(n, 300), conc)
                runs[name].append(await drive(c, body, n, conc))
    print(f"\n3. Throughput, medians of {args.rounds} alternated rounds of {n} requests\n")
    base = statistics.median(r.rps for r in runs["bare"])
    print(f"  {'variant':38s}{'req/s':>9s}{'x bare':>8s}{'p50 ms':>9s}{'p99 ms':>9s}")
    for name, rs in runs.items():
        rps = statistics.median(r.rps for r in rs)
        p50 = statistics.median(r.pct(50) for r in rs)
        p99 = statistics.median(r.pct(99) for r in rs)
        print(f"  {name:38s}{rps:9.0f}{rps / base:8.2f}{p50:9.2f}{p99:9.2f}")


def _profile(prof: Profiler, requests: int, detail: int = 0) -> Profile:
    """Seconds per component; with `detail`, also print the top leaf frames (file:function)
    of the components costing most."""
    session = prof.last_session
    assert session is not None
    seconds: dict[str, float] = defaultdict(float)
    leaves: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for stack, dt in session.frame_records:
        name = classify(stack)
        seconds[name] += dt
        func, file, *_ = stack[-1].split("\x00")
        # The innermost frame of the component itself, or the leaf.
        leaves[name][f"{'/'.join(file.split('/')[-2:])}:{func}"] += dt
    if detail:
        top = sorted((n for n in seconds if n not in (IDLE,)), key=lambda n: -seconds[n])[:4]
        for n in top:
            print(f"    {n}: " + ", ".join(
                f"{k} {1000 * v / requests:.3f}" for k, v in
                sorted(leaves[n].items(), key=lambda kv: -kv[1])[:detail]))
    return Profile(dict(seconds), requests)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=str(ROOT / "models" / "digits"))
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--detail", type=int, default=0,
                   help="also print this many top leaf frames of the costliest components")
    p.add_argument("--interval", type=float, default=0.0005, help="sampling interval, s")
    args = p.parse_args()
    # The access log is part of what is measured: keep writing it, to nowhere.
    with open(os.devnull, "w") as devnull:
        sys.stderr = devnull
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
