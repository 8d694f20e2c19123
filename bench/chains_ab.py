"""A/B of the batched MCMC server against another checkout of it, over HTTP (not a test).

    OMP_NUM_THREADS=1 .venv/bin/python bench/chains_ab.py --before DIR [--rounds 9]
        [--bundle models/digits]

Three servers side by side (bench/serve.py's setup and client): batched MCMC from the
checkout DIR, batched MCMC from this checkout, and this checkout one request at a time
(MEG_MCMC_BATCHING=false, MEG_HEAVY_WORKERS=1). Each round, each server in turn gets 64
concurrent /sample n=16 steps=50 on warmed keep-alive connections. Reports per round
and as medians: chain-steps/s of wall time, and chain-steps per second of the server
process's CPU time (all its threads), which other load on a shared machine moves much
less than wall time.

To compare only the chain loop, DIR is this commit with the loop's files of an earlier
one, e.g.:

    git worktree add --detach /tmp/meg-prev HEAD
    git -C /tmp/meg-prev checkout REV -- meg/mala.py service/engine/chains.py
    # (and service/engine/engine.py's sampler call as it was at REV, where it differs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve import _free_port, _RawConnection, process_server  # noqa: E402


def serve_from(cwd: Path, bundle: Path, **env: str) -> contextlib.AbstractContextManager[str]:
    port = _free_port()
    env = {"MEG_MODELS_DIR": str(bundle), "MEG_LOG_LEVEL": "WARNING", "MEG_MAX_SAMPLES": "100000",
           "MEG_REQUEST_TIMEOUT_S": "120", **env}
    cmd = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log"]
    return process_server(cmd, env, port, "/readyz", Path(tempfile.mkdtemp()) / "server.log",
                          cwd=cwd)


def server_process(base: str) -> psutil.Process:
    port = base.rsplit(":", 1)[1]
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "--port" in cmd and port in cmd:
            return p
    raise RuntimeError(f"no server process on port {port}")


async def one_round(base: str, proc: psutil.Process, clients: int, n: int,
                    steps: int) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of one burst of `clients` requests."""
    conns = [await _RawConnection.open(base) for _ in range(clients)]
    try:
        async def one(i: int, seed: int) -> None:
            body = orjson.dumps({"n": n, "seed": seed, "mcmc": {"steps": steps}})
            status, _ = await conns[i].send(conns[i].request("/sample", body,
                                                             "application/octet-stream"))
            if status != 200:
                raise RuntimeError(f"/sample answered {status}")

        for i in range(0, clients, 2):  # warm every connection, two at a time
            await asyncio.gather(*(one(j, 10**6 + j) for j in range(i, min(i + 2, clients))))
        cpu = proc.cpu_times()
        c0, t0 = cpu.user + cpu.system, time.perf_counter()
        await asyncio.gather(*(one(i, i) for i in range(clients)))
        wall = time.perf_counter() - t0
        cpu = proc.cpu_times()
        return wall, cpu.user + cpu.system - c0
    finally:
        for c in conns:
            c.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "digits")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    bundle = args.bundle.resolve()
    work = args.clients * args.n * args.steps
    with contextlib.ExitStack() as stack:
        bases = {
            "before_batched": stack.enter_context(serve_from(args.before.resolve(), bundle)),
            "batched": stack.enter_context(serve_from(ROOT, bundle)),
            "one_at_a_time": stack.enter_context(serve_from(
                ROOT, bundle, MEG_MCMC_BATCHING="false", MEG_HEAVY_WORKERS="1")),
        }
        procs = {k: server_process(b) for k, b in bases.items()}
        load_start = os.getloadavg()
        wall: dict[str, list[float]] = {k: [] for k in bases}
        cpu: dict[str, list[float]] = {k: [] for k in bases}
        for r in range(args.rounds):
            for k, base in bases.items():
                w, c = asyncio.run(one_round(base, procs[k], args.clients, args.n, args.steps))
                wall[k].append(work / w)
                cpu[k].append(work / c)
            print(f"round {r + 1}: " + ", ".join(
                f"{k} {wall[k][-1]:.0f} wall / {cpu[k][-1]:.0f} CPU" for k in bases), flush=True)
    mw = {k: statistics.median(v) for k, v in wall.items()}
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"load average at start {load_start[0]:.1f}, at end {os.getloadavg()[0]:.1f}")
    for label, m in (("wall", mw), ("server CPU", mc)):
        print(f"{label}: chain-steps/s " + ", ".join(f"{k} {v:.0f}" for k, v in m.items())
              + f"; batched / one at a time: before {m['before_batched'] / m['one_at_a_time']:.3f}, "
              f"now {m['batched'] / m['one_at_a_time']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
