"""Continuous batching of MALA chains across requests.

One loop per model runs on its own thread. The chains of every concurrent MCMC request
live in one batch: at each step boundary waiting requests join (their z0 and cached
U, grad U computed together) and requests whose own step count is done leave with their
answer. One step therefore costs one forward and one backward pass over all chains of
all requests, instead of one per request.

Each request keeps everything that makes its samples its own: its torch.Generator (seeded
from the request's seed, drawing z0, then `meg.mala.draw_block` every NOISE_BLOCK of its
own steps, as `meg.mala.mala` draws them), its step size, temperature and prior (per-row
in the batch), its Robbins-Monro adaptation over its own chains during its own burn-in
(`meg.mala.mean_acceptance`, exact whatever the batch), and its acceptance counts. A step
is `meg.mala.mala_step`, the function `meg.mala.mala` steps with, given per-row columns
holding the same float32 values as its scalars. So a request's z equals
running it alone through `sample_latent`, exactly whenever the networks give a row the
same result whatever the batch around it; dense layers do so only up to the last bits
(BLAS picks different kernels and blockings per batch size), which is what the tests
allow for.

Admission: at most `max_requests` requests in the loop or waiting to join (beyond that,
Unavailable at once), at most `max_chains` chains in one step (a request that would
exceed it waits for the next boundary with room; a request larger than `max_chains` runs
once the batch is empty). A waiting request whose deadline passes never starts; a
running one leaves at the next step boundary with DeadlineExceeded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from meg.mala import (
    NOISE_BLOCK,
    adapt_log_step,
    draw_block,
    energy_and_grad,
    mala_step,
    mean_acceptance,
)
from service.engine.errors import DeadlineExceeded, Unavailable

log = logging.getLogger("service.engine.chains")

Net = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ChainSpec:
    """One request's MALA run: the arguments of `meg.mala.sample_latent`, seeded."""

    n: int
    steps: int
    step_size: float
    temperature: float
    prior: bool
    adapt: bool
    seed: int
    deadline: float | None = None  # time.monotonic(); None = none


@dataclass(frozen=True)
class ChainResult:
    z: np.ndarray  # (n, latent_dim) final states
    acceptance: np.ndarray  # (n,) share accepted after burn-in
    step_size: float  # final (adapted) step size


@dataclass(eq=False)
class _Run:
    """A request's chains and adaptation state while in the loop."""

    spec: ChainSpec
    future: concurrent.futures.Future[ChainResult]
    abandoned: bool = False
    # Set when the run joins the batch (its chains then live in the loop's batch tensors):
    rng: torch.Generator = field(default_factory=torch.Generator)
    z: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (n, d) z0
    eps: float = 0.0
    log_eps: float = 0.0
    noise: tuple[torch.Tensor, ...] = ()  # the current block of draw_block: (n, d) per step
    uniform: tuple[torch.Tensor, ...] = ()  # (n,) per step
    t: int = 0
    burn_in: int = 0
    counted: int = 0
    enqueued: float = field(default_factory=time.monotonic)


class ChainTicket:
    """What `ChainLoop.submit` hands back: the future and a way to give up."""

    def __init__(self, run: _Run):
        self._run = run
        self.future = run.future

    def cancel(self) -> None:
        """The caller no longer wants the answer: the chains leave at the next boundary."""
        self._run.abandoned = True
        self.future.cancel()


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_retaining = False


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep memory that torch frees in the process (glibc only; process-wide; idempotent).

    A batched MALA step allocates and frees the same activations every step (1024 chains
    x 256 hidden units: 1 MiB each). glibc hands freed memory at the top of a heap back
    to the kernel beyond a trim threshold of a few MiB (and a thread's arena, where the
    chain loop allocates, shrinks its heaps likewise), so the next step page-faults it
    all back in: ~2000 minor faults per step, 20-30% of a step's time with one torch
    thread (bench/profile_chains.py). Fixed thresholds (which also stop glibc's dynamic
    adjustment) keep up to `trim_threshold` bytes of freed heap for reuse; allocations
    above `mmap_threshold` (32 MiB is glibc's maximum) still map and unmap. An operator's
    own MALLOC_* or GLIBC_TUNABLES settings win: nothing is changed then."""
    global _retaining
    if _retaining:
        return True
    if not sys.platform.startswith("linux") or any(
            k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _retaining = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
                      and mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _retaining


def batched_latent_energy(generator: Net, energy: Net, temperature: torch.Tensor,
                          prior: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """`meg.mala.latent_energy` with a temperature (B,) and a prior flag (B,) per row."""

    def u(z: torch.Tensor) -> torch.Tensor:
        e = energy(generator(z)).reshape(z.shape[0]) / temperature  # (B,)
        return torch.where(prior, e + 0.5 * z.pow(2).sum(dim=1), e)

    return u


def _per_row(values: list[float], counts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # The same float32 values the scalar arithmetic of meg.mala.mala would use.
    return torch.tensor(values, dtype=like.dtype, device=like.device).repeat_interleave(counts)


class ChainLoop:
    """The batched MALA loop of one model. `submit` is thread-safe and never blocks."""

    # The batch (see _reset_batch): the step's input (_batch_*) and output tensors.
    _z: torch.Tensor
    _u: torch.Tensor
    _g: torch.Tensor
    _acc: torch.Tensor
    _batch_z: torch.Tensor
    _batch_u: torch.Tensor
    _batch_g: torch.Tensor
    _batch_acc: torch.Tensor
    _eps_col: torch.Tensor
    _noise_scale: torch.Tensor
    _four_eps: torch.Tensor
    _counts: torch.Tensor  # (runs,) chains per run, in batch order

    def __init__(self, name: str, generator: Net, energy: Net, latent_dim: int,
                 device: torch.device, *, max_chains: int, max_requests: int,
                 on_step: Callable[[int, float], None] | None = None):
        self.name = name
        self.generator, self.energy = generator, energy
        self.latent_dim = latent_dim
        self.device = device
        self.max_chains = max_chains
        self.max_requests = max_requests
        self.on_step = on_step  # (chains, seconds) after every step, for metrics
        self._cond = threading.Condition()
        self._pending: list[_Run] = []
        self._active: list[_Run] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._step_s = 0.01  # running mean of one step's time: the Retry-After estimate
        self._u_fn: Callable[[torch.Tensor], torch.Tensor] = lambda z: z.sum(dim=1)
        self._reset_batch()
        self.steps_run = 0  # batched steps taken (for tests and benchmarks)
        retain_freed_memory()

    # ------------------------------------------------------------------ requests

    def submit(self, spec: ChainSpec) -> ChainTicket:
        """Queue a run; it joins the batch at the next step boundary."""
        if spec.n < 1 or spec.steps < 0 or spec.step_size <= 0 or spec.temperature <= 0:
            raise ValueError("need n >= 1, steps >= 0, step_size > 0, temperature > 0")
        run = _Run(spec, concurrent.futures.Future())
        with self._cond:
            if self._closing:
                raise Unavailable("shutting_down", "server is shutting down")
            if len(self._pending) + len(self._active) >= self.max_requests:
                raise Unavailable("queue_full", f"too many MCMC requests for model "
                                  f"{self.name!r}; retry later", self._retry_after())
            self._pending.append(run)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"meg-chains-{self.name}",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return ChainTicket(run)

    def _retry_after(self) -> int:
        left = max((r.spec.steps - r.t for r in self._active), default=0)
        return max(1, math.ceil(left * self._step_s))

    @property
    def load(self) -> tuple[int, int]:
        """(requests, chains) in the loop now."""
        active = list(self._active)
        return len(active), sum(r.spec.n for r in active)

    def close(self, timeout: float) -> None:
        """Refuse new runs, let admitted ones finish (up to `timeout` s), stop the thread.
        Runs still there after the timeout fail with Unavailable. Blocking."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left = self._pending + self._active
            self._pending, self._active = [], []
        for r in left:
            _fail(r, Unavailable("shutting_down", "server is shutting down"))

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._active and not self._closing:
                    self._cond.wait()
                if self._closing and not self._pending and not self._active:
                    return
                joining = self._take_pending()
            try:
                if joining:
                    self._join(joining)
                if self._active:
                    self._step()
            except Exception as e:  # a failing step fails every request in it, not the loop
                log.exception("MALA step failed (%s)", self.name)
                with self._cond:
                    failed = self._active + [r for r in joining if r not in self._active]
                    self._active = []
                self._reset_batch()
                for r in failed:
                    _fail(r, e)

    def _take_pending(self) -> list[_Run]:
        """Under the lock: the waiting runs that join now, oldest first."""
        now = time.monotonic()
        chains = sum(r.spec.n for r in self._active)
        joining: list[_Run] = []
        keep: list[_Run] = []
        for r in self._pending:
            if r.abandoned or r.future.cancelled():
                continue
            if r.spec.deadline is not None and now >= r.spec.deadline:
                _fail(r, DeadlineExceeded("MCMC"))  # expired while queued: never starts
                continue
            fits = chains + r.spec.n <= self.max_chains or (chains == 0 and not joining)
            if fits and not keep and r.future.set_running_or_notify_cancel():
                joining.append(r)
                chains += r.spec.n
            elif not r.future.cancelled():
                keep.append(r)  # FIFO: nobody overtakes a run waiting for room
        self._pending = keep
        return joining

    def _columns(self, runs: list[_Run]) -> None:
        """Per-row copies of each run's settings, rebuilt when the batch changes: the
        latent energy (temperature, prior) and the step-size columns (_eps_columns)."""
        self._counts = torch.tensor([r.spec.n for r in runs], device=self.device)
        temp = _per_row([r.spec.temperature for r in runs], self._counts, self._z)
        prior = torch.tensor([r.spec.prior for r in runs], device=self.device
                             ).repeat_interleave(self._counts)
        self._u_fn = batched_latent_energy(self.generator, self.energy, temp, prior)
        self._eps_columns(runs)
        self._stale = False

    def _eps_columns(self, runs: list[_Run]) -> None:
        """eps (B, 1), sqrt(2 eps) (B, 1) and 4 eps (B,) per row: rebuilt also after a
        step in which some run adapted its step size."""
        counts, like = self._counts, self._z
        self._eps_col = _per_row([r.eps for r in runs], counts, like)[:, None]
        self._noise_scale = _per_row([math.sqrt(2.0 * r.eps) for r in runs], counts, like)[:, None]
        self._four_eps = _per_row([4.0 * r.eps for r in runs], counts, like)
        self._stale_eps = False

    def _join(self, runs: list[_Run]) -> None:
        for r in runs:
            s = r.spec
            r.rng = torch.Generator(device=self.device).manual_seed(s.seed)
            r.z = torch.randn((s.n, self.latent_dim), generator=r.rng, device=self.device)
            r.eps = float(s.step_size)
            r.log_eps = math.log(r.eps)
            r.burn_in = s.steps // 2 if s.adapt else 0
        z0 = torch.cat([r.z for r in runs])  # (J, d)
        self._z = z0  # _columns takes dtype and device from it
        self._columns(runs)
        u0, g0 = energy_and_grad(self._u_fn, z0)
        # The joiners go after the runs already in the batch.
        self._z = torch.cat([self._batch_z, z0])
        self._u = torch.cat([self._batch_u, u0])
        self._g = torch.cat([self._batch_g, g0])
        self._acc = torch.cat([self._batch_acc, torch.zeros(len(z0), device=self.device)])
        with self._cond:
            self._active.extend(runs)
        self._stale = True
        self._keep_batch()
        self._finish_done()

    def _reset_batch(self) -> None:
        """The batch (loop thread only): the rows of the active runs in their order, and
        per-row settings (see _columns)."""
        empty = torch.zeros(0, device=self.device)
        self._z = self._batch_z = torch.zeros((0, self.latent_dim), device=self.device)  # (B, d)
        self._g = self._batch_g = torch.zeros((0, self.latent_dim), device=self.device)  # (B, d)
        self._u = self._batch_u = empty  # (B,)
        self._acc = self._batch_acc = empty  # (B,) accepted proposals after burn-in
        self._eps_col = self._noise_scale = self._four_eps = empty
        self._counts = torch.zeros(0, dtype=torch.long, device=self.device)
        self._stale = self._stale_eps = True

    def _keep_batch(self) -> None:
        self._batch_z, self._batch_u, self._batch_g = self._z, self._u, self._g
        self._batch_acc = self._acc

    def _step(self) -> None:
        t0 = time.perf_counter()
        runs = self._active
        if self._stale:
            self._columns(runs)
        elif self._stale_eps:
            self._eps_columns(runs)
        z = self._batch_z  # (B, d)
        # Each run's random numbers from its own generator, a block every NOISE_BLOCK of
        # its own steps, exactly as meg.mala.mala draws them alone.
        noise, uniform = [], []
        for r in runs:
            j = r.t % NOISE_BLOCK
            if j == 0:
                r.noise, r.uniform = draw_block(r.rng, r.spec.n, self.latent_dim,
                                                r.spec.steps - r.t, z.dtype, z.device)
            noise.append(r.noise[j])
            uniform.append(r.uniform[j])
        s = mala_step(self._u_fn, z, self._batch_u, self._batch_g,
                      torch.cat(noise) if len(noise) > 1 else noise[0],
                      torch.cat(uniform) if len(uniform) > 1 else uniform[0],
                      self._eps_col, self._noise_scale, self._four_eps)
        self._z, self._u, self._g = s.z, s.u, s.g
        # meg.mala.mala's rule per run: adapt during its own burn-in, count acceptance after.
        gained = self._batch_acc + s.accept.to(self._batch_acc.dtype)
        burning = [r.spec.adapt and r.t < r.burn_in for r in runs]
        if not any(burning):
            self._acc = gained
            for r in runs:
                r.counted += 1
                r.t += 1
        else:
            counting = torch.tensor([not b for b in burning], device=z.device
                                    ).repeat_interleave(self._counts)
            self._acc = torch.where(counting, gained, self._batch_acc)
            log_alpha = s.log_alpha.tolist()  # one transfer for all the runs that adapt
            start = 0
            for r, b in zip(runs, burning, strict=True):
                end = start + r.spec.n
                if b:
                    r.log_eps = adapt_log_step(r.log_eps, mean_acceptance(log_alpha[start:end]),
                                               r.t)
                    r.eps = math.exp(r.log_eps)
                else:
                    r.counted += 1
                r.t += 1
                start = end
            self._stale_eps = True
        self._keep_batch()
        self.steps_run += 1
        dt = time.perf_counter() - t0
        self._step_s += 0.05 * (dt - self._step_s)
        if self.on_step is not None:
            self.on_step(len(z), dt)
        self._finish_done()

    def _finish_done(self) -> None:
        """Hand finished runs their answer; drop abandoned and expired ones; close the
        batch over the rows that stay."""
        now = time.monotonic()
        stay: list[_Run] = []
        keep: list[tuple[int, int]] = []  # row ranges of the runs that stay
        start = 0
        for r in self._active:
            end = start + r.spec.n
            if r.abandoned:
                pass
            elif r.t >= r.spec.steps:
                acc = self._batch_acc[start:end] / max(r.counted, 1)
                _succeed(r, ChainResult(self._batch_z[start:end].cpu().numpy(),
                                        acc.cpu().numpy(), float(r.eps)))
            elif r.spec.deadline is not None and now >= r.spec.deadline:
                _fail(r, DeadlineExceeded("MCMC"))
            else:
                stay.append(r)
                keep.append((start, end))
            start = end
        if len(stay) != len(self._active):
            # Index tensors only when the batch changes: building them every step cost
            # one small allocation per run per step.
            rows = (torch.cat([torch.arange(a, b, device=self.device) for a, b in keep])
                    if keep else torch.zeros(0, dtype=torch.long, device=self.device))
            self._z, self._u = self._batch_z[rows], self._batch_u[rows]
            self._g, self._acc = self._batch_g[rows], self._batch_acc[rows]
            self._keep_batch()
            self._stale = True
        with self._cond:
            self._active = stay


def _succeed(r: _Run, result: ChainResult) -> None:
    # The caller may cancel from its own thread at any moment: a lost race is fine.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        r.future.set_result(result)


def _fail(r: _Run, e: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        r.future.set_exception(e)
