"""Continuous batching of MALA chains (service/engine/chains.py): a request's samples are
those of running it alone through meg.mala.sample_latent, whatever runs beside it."""

from __future__ import annotations

import resource
import sys
import threading
import time

import numpy as np
import pytest
import torch

from meg.mala import sample_latent
from service.engine import chains
from service.engine.chains import ChainLoop, ChainResult, ChainSpec
from service.engine.errors import DeadlineExceeded, Unavailable

LATENT = 3
M = torch.tensor([1.0, -0.5, 0.25])


def elementwise_gen(z: torch.Tensor) -> torch.Tensor:
    return 1.5 * z + 0.3  # (B, d): no mixing across rows or a GEMM


def quadratic_energy(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x - M).pow(2).sum(dim=1) + 0.1 * torch.sin(3 * x).sum(dim=1)  # (B,)


def mlp_nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    gen = torch.nn.Sequential(torch.nn.Linear(LATENT, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    energy = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LeakyReLU(0.2),
                                 torch.nn.Linear(32, 1))
    return gen, energy


SPECS = [
    ChainSpec(n=5, steps=40, step_size=0.05, temperature=1.0, prior=True, adapt=False, seed=1),
    ChainSpec(n=1, steps=7, step_size=0.2, temperature=0.5, prior=False, adapt=False, seed=2),
    ChainSpec(n=17, steps=60, step_size=0.01, temperature=2.0, prior=True, adapt=True, seed=3),
    ChainSpec(n=3, steps=25, step_size=0.3, temperature=1.0, prior=False, adapt=True, seed=4),
    ChainSpec(n=8, steps=40, step_size=0.05, temperature=1.0, prior=True, adapt=False, seed=5),
]


def alone(gen, energy, s: ChainSpec) -> ChainResult:
    res = sample_latent(gen, energy, n=s.n, latent_dim=LATENT, n_steps=s.steps,
                        step_size=s.step_size, temperature=s.temperature, prior=s.prior,
                        adapt=s.adapt, rng=torch.Generator().manual_seed(s.seed))
    return ChainResult(res.z.numpy(), res.acceptance.numpy(), res.step_size)


def mixed(gen, energy, specs: list[ChainSpec], stagger: bool = False,
          **kw) -> tuple[list[ChainResult], ChainLoop]:
    """All specs through one loop: submitted together (they share every step), or one by
    one while the others run (they join and leave at different step boundaries)."""
    loop = ChainLoop("m", gen, energy, LATENT, torch.device("cpu"),
                     max_chains=kw.pop("max_chains", 4096), max_requests=64, **kw)
    tickets = []
    if stagger:
        for s in specs:
            tickets.append(loop.submit(s))
            before = loop.steps_run
            while loop.steps_run < before + 3 and not tickets[-1].future.done():
                time.sleep(0.001)
    else:
        with loop._cond:  # hold the loop back so that every spec joins the first step
            tickets = [loop.submit(s) for s in specs]
    out = [t.future.result(timeout=30) for t in tickets]
    loop.close(5)
    return out, loop


@pytest.mark.parametrize("stagger", [False, True])
def test_row_independent_networks_give_bitwise_the_alone_result(stagger: bool) -> None:
    want = [alone(elementwise_gen, quadratic_energy, s) for s in SPECS]
    got, loop = mixed(elementwise_gen, quadratic_energy, SPECS, stagger)
    for s, w, g in zip(SPECS, want, got, strict=True):
        assert np.array_equal(w.z, g.z), s
        assert np.array_equal(w.acceptance, g.acceptance), s
        assert w.step_size == g.step_size, s
    assert loop.steps_run < sum(s.steps for s in SPECS)  # steps were shared


def test_dense_networks_match_alone_up_to_blas_rounding() -> None:
    """GEMMs round the last bits differently per batch size (kernel choice and blocking),
    so rows of a mixed batch agree with the alone run to float32 rounding, not bitwise."""
    gen, energy = mlp_nets()
    want = [alone(gen, energy, s) for s in SPECS]
    got, _ = mixed(gen, energy, SPECS, stagger=True)
    for s, w, g in zip(SPECS, want, got, strict=True):
        np.testing.assert_allclose(g.z, w.z, rtol=1e-4, atol=1e-5, err_msg=str(s))
        np.testing.assert_allclose(g.acceptance, w.acceptance, atol=1e-6)
        assert g.step_size == pytest.approx(w.step_size, rel=1e-5)


def test_a_small_request_leaves_before_a_long_one_ends() -> None:
    loop = ChainLoop("m", elementwise_gen, quadratic_energy, LATENT, torch.device("cpu"),
                     max_chains=4096, max_requests=8)
    big = loop.submit(ChainSpec(n=64, steps=3000, step_size=0.01, temperature=1.0, prior=True,
                                adapt=False, seed=0))
    while loop.steps_run < 2:
        time.sleep(0.001)
    small = loop.submit(ChainSpec(n=1, steps=5, step_size=0.01, temperature=1.0, prior=True,
                                  adapt=False, seed=1))
    small.future.result(timeout=10)
    assert not big.future.done()
    big.cancel()
    loop.close(5)
    assert loop.steps_run < 3000


def test_limits_deadlines_and_oversized_requests() -> None:
    loop = ChainLoop("m", elementwise_gen, quadratic_energy, LATENT, torch.device("cpu"),
                     max_chains=10, max_requests=3)
    spec = ChainSpec(n=4, steps=5, step_size=0.01, temperature=1.0, prior=True, adapt=False,
                     seed=0)
    with loop._cond:
        expired = loop.submit(ChainSpec(**{**spec.__dict__, "deadline": time.monotonic() - 1}))
        large = loop.submit(ChainSpec(**{**spec.__dict__, "n": 25}))  # > max_chains: alone
        ok = loop.submit(spec)
        with pytest.raises(Unavailable) as full:
            loop.submit(spec)
        assert full.value.code == "queue_full"
        assert full.value.retry_after_s is not None and full.value.retry_after_s >= 1
    with pytest.raises(DeadlineExceeded):
        expired.future.result(timeout=10)
    assert large.future.result(timeout=10).z.shape == (25, LATENT)
    assert ok.future.result(timeout=10).z.shape == (4, LATENT)
    loop.close(5)
    with pytest.raises(Unavailable):
        loop.submit(spec)


def test_a_running_request_stops_at_its_deadline() -> None:
    loop = ChainLoop("m", elementwise_gen, quadratic_energy, LATENT, torch.device("cpu"),
                     max_chains=100, max_requests=3)
    t = loop.submit(ChainSpec(n=2, steps=10**7, step_size=0.01, temperature=1.0, prior=True,
                              adapt=False, seed=0, deadline=time.monotonic() + 0.2))
    with pytest.raises(DeadlineExceeded):
        t.future.result(timeout=10)
    loop.close(5)


def test_a_failing_step_fails_its_requests_not_the_loop() -> None:
    calls = {"n": 0}

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return quadratic_energy(x)

    loop = ChainLoop("m", elementwise_gen, flaky, LATENT, torch.device("cpu"),
                     max_chains=100, max_requests=3)
    spec = ChainSpec(n=2, steps=5, step_size=0.01, temperature=1.0, prior=True, adapt=False,
                     seed=0)
    with pytest.raises(RuntimeError, match="boom"):
        loop.submit(spec).future.result(timeout=10)
    assert loop.submit(spec).future.result(timeout=10).z.shape == (2, LATENT)
    loop.close(5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_step_memory_is_reused_not_faulted_back() -> None:
    """The loop's steps allocate and free the same MiB-sized activations each step; once
    the loop has set glibc's thresholds they come back from the heap, not from the
    kernel one page fault per 4 KiB (checked in a thread, as the loop runs)."""
    ChainLoop("m", elementwise_gen, quadratic_energy, LATENT, torch.device("cpu"),
              max_chains=10, max_requests=1)  # sets the thresholds
    assert chains._retaining
    faults: list[int] = []

    def churn() -> None:
        x = torch.randn(1024, 256)
        for _ in range(5):  # warm the thread's arena
            (torch.tanh(x @ torch.ones(256, 256)) * 2).sum()
        f0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(20):  # ~60 MiB allocated and freed
            (torch.tanh(x @ torch.ones(256, 256)) * 2).sum()
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0)

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    # The glibc defaults: ~15000 (256 per MiB freed); retained: 0 to ~1000 (a new heap).
    assert faults[0] < 3000, faults


def test_operator_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chains, "_retaining", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    assert chains.retain_freed_memory() is False
