"""Admission control: a bounded number of requests of one work class running at once,
a bounded number waiting behind them, and a clear "retry later" beyond that.

Every kind of work the engine does belongs to a class (batched feed-forward, MCMC,
explain, render); each class has its own limits, so a flood of one kind cannot queue up
in front of another. A request that finds the class full gets `Unavailable` (HTTP 503 with
Retry-After) at once instead of waiting for a timeout; a request whose deadline passes
while it waits for a slot gets `DeadlineExceeded` and never starts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import AsyncIterator

from service.engine.errors import DeadlineExceeded, Unavailable


def shutting_down() -> Unavailable:
    return Unavailable("shutting_down", "server is shutting down; retry on another replica")


class Admission:
    """Limits for one work class: `concurrency` running, `queue_size` waiting (FIFO).
    Create and use it on the event loop."""

    def __init__(self, name: str, concurrency: int, queue_size: int):
        if concurrency < 1 or queue_size < 0:
            raise ValueError("concurrency must be >= 1 and queue_size >= 0")
        self.name = name
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._mean_s = 0.1  # running mean of a slot's hold time: the Retry-After estimate
        self.closing = False

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def retry_after_s(self) -> int:
        """Seconds until the queue ahead has likely drained (at least 1)."""
        backlog = self.running + self.waiting
        return max(1, math.ceil(backlog * self._mean_s / self.concurrency))

    def full(self) -> Unavailable:
        return Unavailable("queue_full", f"too many {self.name} requests in progress; retry "
                           "later", self.retry_after_s())

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold one of the class's slots for the body of the `async with`. `deadline` is in
        loop.time() seconds: past it, a waiting request gives up with DeadlineExceeded."""
        if self.closing:
            raise shutting_down()
        loop = asyncio.get_running_loop()
        if self.running < self.concurrency and not self.waiting:
            self.running += 1
        else:
            if self.waiting >= self.queue_size:
                raise self.full()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), remaining)
            except TimeoutError:
                if waiter.done():  # granted just as time ran out: pass the slot on
                    self._release()
                raise DeadlineExceeded() from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if not waiter.done():
                    waiter.cancel()
        t0 = loop.time()
        try:
            yield
        finally:
            self._mean_s += 0.2 * ((loop.time() - t0) - self._mean_s)
            self._release()

    def _release(self) -> None:
        # Hand the slot straight to the oldest live waiter (running stays the same), or
        # free it.
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
        self.running -= 1

    def close(self) -> None:
        """Refuse new requests (work already admitted carries on)."""
        self.closing = True
