"""Micro-batching of concurrent requests into one ONNX Runtime call, with a bounded queue.

`workers` slots bound how many batches run at once. A worker with a free slot takes everything queued (up to
`max_batch`) and waits at most `max_wait_ms` more for companions. The default 0 is greedy batching: under load the
requests that arrived while the running batches ran form the next one, and a request that finds a free slot and
nobody queued runs at once, from its own task: no hand-off to a worker task and back, two event-loop turns less
(at low load, when the loop's caches are cold, each turn costs tens of microseconds). Inference runs in a thread
pool so the event loop keeps accepting and fetching. Past `capacity` queued jobs, `submit` fails at once (the API
answers 429) instead of letting latency grow without bound.

A queue deadline bounds latency under overload (as Triton's `default_timeout` with `timeout_action: REJECT`): a
job that could not start within `queue_timeout_ms` is refused with `QueueTimeoutError` when a worker reaches it,
and while the oldest queued job is already past that age, `admit`/`submit` refuse new ones at once, so a
rejection is answered in about the time it takes to refuse, not after waiting.

`fn` may put an exception in place of one result: that job fails, the rest of its batch is answered.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


class QueueFullError(RuntimeError):
    """The batcher's queue is at capacity: shed load now."""


class QueueTimeoutError(QueueFullError):
    """The queue is older than its deadline: this job would not start in time, refuse it now."""

    reason = "queue_timeout"  # the label of scoter_rejections_total


class NotRunningError(RuntimeError):
    """The batcher is not started or is shutting down."""


# Called (in the request's context) when a job has to wait in the queue: the HTTP layer sets it to start
# watching for the client's disconnect, only for requests that wait (a request run at once never pays for it).
ON_QUEUED: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("scoter_on_queued",
                                                                                   default=None)


@dataclass
class _Job(Generic[P, R]):
    payload: P
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchResult(Generic[R]):
    value: R
    queue_wait_s: float
    inference_s: float
    batch_size: int


class MicroBatcher(Generic[P, R]):
    """Coalesces `submit` calls into `fn(list_of_payloads) -> list_of_results`, run in `executor`."""

    def __init__(self, fn: Callable[[list[P]], list[R | BaseException]], *, executor: Executor, max_batch: int,
                 max_wait_ms: float, capacity: int, workers: int = 1, queue_timeout_ms: float | None = None,
                 on_batch: Callable[[int], None] | None = None, name: str = "batcher"):
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.capacity = capacity
        self.n_workers = workers
        self.queue_timeout_s = queue_timeout_ms / 1000.0 if queue_timeout_ms else None
        self.on_batch = on_batch or (lambda n: None)
        self.name = name
        self._queue: deque[_Job[P, R]] | None = None
        self._arrived: asyncio.Event | None = None  # a job was queued (companions for a waiting worker)
        self._wake: asyncio.Event | None = None  # a job was queued or a slot freed (idle workers)
        self._free = 0  # slots: batches that may start now
        self._workers: list[asyncio.Task] = []
        self._running = False
        self._in_hand: list[list[_Job[P, R]]] = []  # per worker: jobs taken off the queue, not answered yet

    @property
    def running(self) -> bool:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue else 0

    def admit(self) -> None:
        """Raise QueueTimeoutError when a job queued now would not start in time (the oldest queued one is
        already past the queue deadline): the caller refuses the request before doing any work for it."""
        q, limit = self._queue, self.queue_timeout_s
        if q and limit is not None and time.perf_counter() - q[0].enqueued > limit:
            raise QueueTimeoutError(f"{self.name}: queue older than {limit * 1000:.0f} ms")

    async def start(self) -> None:
        self._queue = deque()
        self._arrived = asyncio.Event()
        self._wake = asyncio.Event()
        self._free = self.n_workers
        self._running = True
        self._in_hand = [[] for _ in range(self.n_workers)]
        self._workers = [asyncio.create_task(self._work(held), name=f"{self.name}-{i}")
                         for i, held in enumerate(self._in_hand)]

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Refuse new work, let queued and running jobs finish (up to the timeout), then stop the workers."""
        self._running = False
        if self._queue is not None:
            deadline = time.monotonic() + drain_timeout_s
            while ((self._queue or any(self._in_hand) or self._free < self.n_workers)
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.005)
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while self._queue:
            self._fail([self._queue.popleft()], NotRunningError(f"{self.name} stopped"))

    async def submit(self, payload: P) -> BatchResult[R]:
        if not self._running or self._queue is None:
            raise NotRunningError(f"{self.name} is not running")
        if self.max_wait_s == 0 and self._free > 0 and not self._queue:
            return await self._run_now(payload)
        if len(self._queue) >= self.capacity:
            raise QueueFullError(f"{self.name}: {self.capacity} requests already queued")
        self.admit()
        job: _Job[P, R] = _Job(payload, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._arrived.set()
        self._wake.set()
        hook = ON_QUEUED.get()
        if hook is not None:
            hook()
        return await job.future

    async def _run_now(self, payload: P) -> BatchResult[R]:
        """A batch of one in the caller's task (greedy policy, a slot free, nobody queued)."""
        self._free -= 1
        try:
            results, _, inference_s = await self._execute([payload])
        finally:
            self._release_slot()
        if isinstance(results[0], BaseException):
            raise results[0]
        return BatchResult(results[0], 0.0, inference_s, 1)

    async def _execute(self, payloads: list[P]) -> tuple[list[R], float, float]:
        """Run one batch in the executor: (results, start time, inference seconds); a failure is logged and
        raised to the caller."""
        started = time.perf_counter()
        self.on_batch(len(payloads))
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, payloads)
        except Exception:
            log.exception("%s: batch of %d failed", self.name, len(payloads))
            raise
        return results, started, time.perf_counter() - started

    def _release_slot(self) -> None:
        self._free += 1
        self._wake.set()

    async def _wait_for_work(self) -> None:
        """Until a job is queued and a slot is free (a request running in its own task may hold one)."""
        while not self._queue or self._free == 0:
            self._wake.clear()
            await self._wake.wait()

    async def _collect(self, batch: list[_Job[P, R]]) -> None:
        """Take the first queued job, then gather more until max_batch or max_wait has passed.

        Jobs go into the worker's own `batch` as they leave the queue, so `stop` sees them as in hand and a
        cancelled worker can still fail them: a request never waits forever on a job nobody holds.
        """
        batch.append(self._queue.popleft())  # `_wait_for_work` saw one queued
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            while len(batch) < self.max_batch and self._queue:
                batch.append(self._queue.popleft())
            remaining = deadline - time.perf_counter()
            if len(batch) >= self.max_batch or remaining <= 0:
                break
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                while len(batch) < self.max_batch and self._queue:
                    batch.append(self._queue.popleft())
                break

    def _fail(self, jobs: list[_Job[P, R]], exc: BaseException) -> None:
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(exc)

    async def _work(self, held: list[_Job[P, R]]) -> None:
        """One worker loop: wait for a queued job and a free slot, run one batch; `held` is this worker's entry
        in `_in_hand`."""
        while True:
            await self._wait_for_work()
            self._free -= 1
            try:
                await self._collect(held)
                batch = self._live(held)
                if batch:
                    await self._run(batch)
            except asyncio.CancelledError:
                self._fail(held, NotRunningError(f"{self.name} stopped"))
                raise
            finally:
                held.clear()
                self._release_slot()

    def _live(self, held: list[_Job[P, R]]) -> list[_Job[P, R]]:
        """The jobs worth running: abandoned ones (cancelled, client gone) are skipped, and ones past the queue
        deadline are refused now (their callers answer at once) instead of being served late."""
        if self.queue_timeout_s is None:
            return [j for j in held if not j.future.done()]
        limit = self.queue_timeout_s + self.max_wait_s  # the batching window is not queueing
        now, live = time.perf_counter(), []
        for j in held:
            if j.future.done():
                continue
            if now - j.enqueued > limit:
                j.future.set_exception(QueueTimeoutError(f"{self.name}: not started within {limit * 1000:.0f} ms"))
            else:
                live.append(j)
        return live

    async def _run(self, batch: list[_Job[P, R]]) -> None:
        try:
            results, started, inference_s = await self._execute([j.payload for j in batch])
        except Exception as exc:  # one bad batch fails its requests, never the worker
            self._fail(batch, exc)
            return
        for j, r in zip(batch, results, strict=True):
            if j.future.done():
                continue
            if isinstance(r, BaseException):  # this row failed; the rest of the batch is answered
                j.future.set_exception(r)
            else:
                j.future.set_result(BatchResult(r, started - j.enqueued, inference_s, len(batch)))
