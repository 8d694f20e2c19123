"""Dynamic batching, in the manner of Triton's dynamic batcher.

Concurrent requests for the same model and operation wait in a bounded queue; a worker
task takes the oldest, keeps collecting until the batch holds `max_batch_size` rows or
`max_delay` has passed since that oldest request arrived, runs one inference call in the
thread pool and hands every request its own slice of the result. A request is never
split, so one larger than `max_batch_size` runs alone. Rows are independent through the
networks, so batching never changes a result (tests check it row for row).

A full queue raises Unavailable (retry later); a request still waiting at its deadline
(queued, or in a batch still running) raises DeadlineExceeded. Deadlines are kept by one
timer per batcher, set for the earliest pending one, rather than a timer per request.
With `max_batch_size == 1` or `max_delay == 0` batching is off: each request is its own
call (still bounded by `queue_size` requests in flight and by the deadline).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.engine.errors import DeadlineExceeded, Unavailable
from service.metrics import Metrics

log = logging.getLogger("service.engine.batching")

InferFn = Callable[[np.ndarray], np.ndarray]


def queue_full(model: str, op: str) -> Unavailable:
    return Unavailable("queue_full", f"too many queued {op} requests for model {model!r}; "
                       "retry later")


def shutting_down() -> Unavailable:
    return Unavailable("shutting_down", "server is shutting down")


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float  # loop.time()
    deadline: float  # loop.time()


class DynamicBatcher:
    """One queue and worker for one (model, op). Create and use it on the event loop."""

    def __init__(self, model: str, op: str, fn: InferFn, *, max_batch_size: int,
                 max_delay_s: float, queue_size: int, executor: Executor, metrics: Metrics,
                 backend: str = "onnxruntime", inline_s: float = 0.0):
        self.model, self.op, self.fn = model, op, fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self.executor = executor
        self.metrics = metrics
        self.backend = backend
        self.enabled = max_batch_size > 1 and max_delay_s > 0
        self.inline_s = inline_s
        self._row_cost: float | None = None  # EWMA of an inference call's seconds per row
        self._queue: collections.deque[_Item] = collections.deque()
        self._rows = 0  # rows waiting in _queue
        self._in_flight = 0  # unbatched mode: calls running
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._running: list[_Item] = []  # the batch in the thread pool
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf  # loop.time() the sweep timer fires at
        self._depth = metrics.queue_depth.labels(model=model, op=op)
        self._wait = metrics.queue_wait.labels(model=model, op=op)
        self._batch = metrics.batch_size.labels(model=model, op=op)
        self._infer = metrics.inference_duration.labels(model=model, op=op, backend=backend)

    def _call(self, x: np.ndarray) -> np.ndarray:
        """The inference call (in a pool thread, or inline: `_inline_ok`); metrics
        observed here."""
        t0 = time.perf_counter()
        out = self.fn(x)
        took = time.perf_counter() - t0
        self._infer.observe(took)
        self._batch.observe(len(x))
        per_row = took / max(len(x), 1)
        self._row_cost = per_row if self._row_cost is None else 0.8 * self._row_cost + 0.2 * per_row
        return out

    def _inline_ok(self, rows: int) -> bool:
        """Whether a batch of `rows` may run on the event loop itself: only once calls
        have been measured, and when the expected time is under `inline_s`. Handing a
        sub-millisecond call to a pool thread costs more than the call (two GIL
        hand-offs and a wake-up of the loop), and that little loop time keeps /healthz
        and every other request responsive."""
        return (self._row_cost is not None and self.inline_s > 0
                and self._row_cost * rows < self.inline_s)

    async def submit(self, x: np.ndarray, deadline: float) -> np.ndarray:
        """Run `fn` on rows `x` (as part of a batch) and return this request's rows.
        `deadline` is in loop.time() seconds."""
        if self._closing:
            raise shutting_down()
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded()
        # A request that fills a batch on its own gains nothing from waiting for company:
        # with nobody queued ahead of it (so order is kept) it runs at once.
        if not self.enabled or (len(x) >= self.max_batch_size and not self._queue):
            return await self._submit_direct(x, remaining)
        if len(self._queue) >= self.queue_size:
            raise queue_full(self.model, self.op)
        item = _Item(x, loop.create_future(), loop.time(), deadline)
        self._queue.append(item)
        self._rows += len(x)
        self._depth.set(len(self._queue))
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.model}-{self.op}")
        # Wake the worker when it may be idle (first item) or the batch is full; while it
        # collects it sleeps until the flush time, not once per arriving request.
        if len(self._queue) == 1 or self._rows >= self.max_batch_size:
            self._wakeup.set()
        if deadline < self._sweep_at:
            self._arm_sweep(loop, deadline)
        return await item.future  # DeadlineExceeded from _expire at the deadline

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep_at = at
        self._sweep = loop.call_at(at, self._expire)

    def _expire(self) -> None:
        """Fail every waiting request whose deadline has passed, then set the timer for
        the earliest one left."""
        self._sweep, self._sweep_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        nxt = math.inf
        for item in (*self._queue, *self._running):
            if item.future.done():
                continue
            if item.deadline <= now:
                item.future.set_exception(DeadlineExceeded())
            elif item.deadline < nxt:
                nxt = item.deadline
        if nxt < math.inf:
            self._arm_sweep(loop, nxt)

    async def _submit_direct(self, x: np.ndarray, remaining: float) -> np.ndarray:
        if self._in_flight >= self.queue_size:
            raise queue_full(self.model, self.op)
        self._in_flight += 1
        self._depth.inc()
        try:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self.executor, self._call, x)
            self._wait.observe(0.0)
            return await asyncio.wait_for(fut, remaining)
        except TimeoutError:
            raise DeadlineExceeded() from None
        finally:
            self._in_flight -= 1
            self._depth.dec()

    def _take_batch(self, now: float) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # the caller gave up (deadline) while queued
                self._queue.popleft()
                self._rows -= len(item.x)
                continue
            if batch and rows + len(item.x) > self.max_batch_size:
                break
            self._queue.popleft()
            self._rows -= len(item.x)
            if now >= item.deadline:
                item.future.set_exception(DeadlineExceeded())
                continue
            self._wait.observe(now - item.enqueued)
            batch.append(item)
            rows += len(item.x)
        self._depth.set(len(self._queue))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Collect until full or the oldest request has waited max_delay.
            flush_at = self._queue[0].enqueued + self.max_delay_s
            while (self._rows < self.max_batch_size and not self._closing
                   and loop.time() < flush_at):
                # One timer handle per wait, not a wait_for (a task and a timer) per wake.
                self._wakeup.clear()
                timer = loop.call_at(flush_at, self._wakeup.set)
                try:
                    await self._wakeup.wait()
                finally:
                    timer.cancel()
            batch = self._take_batch(loop.time())
            if not batch:
                continue
            x = batch[0].x if len(batch) == 1 else np.concatenate([b.x for b in batch])
            self._running = batch
            try:
                if self._inline_ok(len(x)):
                    out = self._call(x)
                else:
                    out = await loop.run_in_executor(self.executor, self._call, x)
            except Exception as e:  # hand the failure to every caller of this batch
                log.exception("batch of %d rows failed (%s/%s)", len(x), self.model, self.op)
                for b in batch:
                    if not b.future.done():
                        b.future.set_exception(e)
                continue
            finally:
                self._running = []
            start = 0
            for b in batch:
                end = start + len(b.x)
                if not b.future.done():
                    b.future.set_result(out[start:end])
                start = end

    async def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish, stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(self._worker, timeout)
            except TimeoutError:
                self._worker.cancel()
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class BatcherPool:
    """The batchers, one per (model, version, op), created on first use."""

    def __init__(self, *, max_batch_size: int, max_delay_s: float, queue_size: int,
                 executor: Executor, metrics: Metrics, inline_s: float = 0.0):
        self.kw = dict(max_batch_size=max_batch_size, max_delay_s=max_delay_s,
                       queue_size=queue_size, executor=executor, metrics=metrics,
                       inline_s=inline_s)
        self._batchers: dict[tuple[str, str, str], DynamicBatcher] = {}

    def get(self, model: str, version: str, op: str, fn: InferFn) -> DynamicBatcher:
        key = (model, version, op)
        b = self._batchers.get(key)
        if b is None:
            b = self._batchers[key] = DynamicBatcher(model, op, fn, **self.kw)  # type: ignore[arg-type]
        return b

    async def prune(self, live: set[tuple[str, str]], timeout: float = 30.0) -> None:
        """Close and forget the batchers of (model, version) pairs no longer served (a
        removed bundle, or the old version of a replaced one). Queued requests finish;
        a request that still holds the old model later gets a fresh batcher."""
        stale = [k for k in self._batchers if k[:2] not in live]
        await asyncio.gather(*(self._batchers.pop(k).close(timeout) for k in stale))

    async def close(self, timeout: float = 30.0) -> None:
        await asyncio.gather(*(b.close(timeout) for b in self._batchers.values()))
