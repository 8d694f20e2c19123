"""Where the continuous-batching chain loop's time goes (in process, no HTTP; not a test).

    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_chains.py [--bundle models/digits]
        [--clients 64] [--n 16] [--steps 50] [--rounds 5] [--cprofile]

Times, side by side and taking turns over `rounds` (medians):
  loop:   every request joins service.engine.chains.ChainLoop at once (the batched server);
  pure:   one `meg.mala.sample_latent` over clients*n chains (no per-request bookkeeping:
          what the loop would cost if it were free);
  alone:  `sample_latent` one request after another (the one-at-a-time server).
Wall and CPU time (all threads; less sensitive to other load on a shared machine) and
minor page faults. With --cprofile, also a cProfile of the loop's thread for one round (top functions by
own time), which names the per-step bookkeeping.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meg import bundle as B  # noqa: E402
from meg.mala import sample_latent  # noqa: E402
from service.engine import chains  # noqa: E402
from service.engine.chains import ChainLoop, ChainSpec  # noqa: E402
from service.engine.models import load_torch_networks  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "digits")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--adapt", action="store_true", help="every request adapts its step size")
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's trim/mmap thresholds as they are (the loop sets them)")
    args = p.parse_args(argv)
    if args.malloc_defaults:
        chains.retain_freed_memory = lambda *a, **k: False  # type: ignore[assignment]
    man = B.read_manifest(args.bundle, verify=False)
    gen, energy = load_torch_networks(args.bundle, man, torch.device("cpu"))
    c, n, steps, d = args.clients, args.n, args.steps, man.latent_dim
    loop = ChainLoop("profile", gen, energy, d, torch.device("cpu"), max_chains=c * n,
                     max_requests=c)

    def batched() -> None:
        with loop._cond:  # every request joins the first step
            tickets = [loop.submit(ChainSpec(n, steps, 0.01, 1.0, True, args.adapt, i))
                       for i in range(c)]
        for t in tickets:
            t.future.result()

    def pure() -> None:
        sample_latent(gen, energy, n=c * n, latent_dim=d, n_steps=steps, adapt=args.adapt,
                      rng=torch.Generator().manual_seed(0))

    def alone() -> None:
        for i in range(c):
            sample_latent(gen, energy, n=n, latent_dim=d, n_steps=steps, adapt=args.adapt,
                          rng=torch.Generator().manual_seed(i))

    fns = {"loop": batched, "pure": pure, "alone": alone}
    for fn in fns.values():
        fn()  # warm up
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}  # all threads: robust to other load
    faults: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
            faults[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    work = c * n * steps
    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}; "
          f"{c} requests x n={n} x steps={steps}{' adapt' if args.adapt else ''}")
    for k, v in times.items():
        print(f"  {k:6s} median {med[k] * 1e3:7.1f} ms wall ({work / med[k]:8.0f} chain-steps/s), "
              f"{mcpu[k] * 1e3:7.1f} ms CPU, {statistics.median(faults[k]):7.0f} minor faults; "
              f"wall by round {', '.join(f'{x * 1e3:.0f}' for x in v)}")
    for label, m in (("wall", med), ("CPU", mcpu)):
        print(f"  {label}: alone/loop {m['alone'] / m['loop']:.3f}, alone/pure "
              f"{m['alone'] / m['pure']:.3f}, loop over pure {(m['loop'] / m['pure'] - 1) * 100:+.1f}%")
    if args.cprofile:
        prof = cProfile.Profile()
        orig = loop._step

        def profiled_step() -> None:
            prof.enable()
            try:
                orig()
            finally:
                prof.disable()

        loop._step = profiled_step  # type: ignore[method-assign]
        batched()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
        print(s.getvalue())
    loop.close(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
