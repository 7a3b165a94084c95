"""Micro-batching: concurrent requests coalesce into one call; past capacity, submit fails at once."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batcher import MicroBatcher, NotRunningError, QueueFullError


@pytest.fixture
def executor():
    ex = ThreadPoolExecutor(1)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


async def test_concurrent_requests_share_one_batch(executor):
    calls: list[list[int]] = []

    def fn(xs: list[int]) -> list[int]:
        calls.append(list(xs))
        return [x * 10 for x in xs]

    sizes: list[int] = []
    b = MicroBatcher(fn, executor=executor, max_batch=16, max_wait_ms=50, capacity=64, on_batch=sizes.append)
    await b.start()
    try:
        results = await asyncio.gather(*(b.submit(i) for i in range(8)))
    finally:
        await b.stop()
    assert [r.value for r in results] == [i * 10 for i in range(8)]
    assert calls == [list(range(8))] and sizes == [8]
    assert all(r.batch_size == 8 and r.queue_wait_s >= 0 for r in results)


async def test_max_batch_splits_and_lone_request_waits_at_most_max_wait(executor):
    calls: list[int] = []
    b = MicroBatcher(lambda xs: (calls.append(len(xs)), xs)[1], executor=executor, max_batch=4,
                     max_wait_ms=20, capacity=64)
    await b.start()
    try:
        await asyncio.gather(*(b.submit(i) for i in range(10)))
        t0 = time.perf_counter()
        r = await b.submit(99)
        lone = time.perf_counter() - t0
    finally:
        await b.stop()
    assert max(calls[:-1]) <= 4 and sum(calls[:-1]) == 10
    assert r.value == 99 and r.batch_size == 1
    assert lone < 0.5  # waited for companions at most ~max_wait, not forever


async def test_greedy_policy_dispatches_a_lone_request_at_once_and_batches_arrivals_during_a_run(executor):
    """max_wait_ms=0 (the default): an idle worker never waits for companions; requests that arrive while a
    batch runs form the next batch together."""
    gate = threading.Event()
    calls: list[list[int]] = []

    def fn(xs: list[int]) -> list[int]:
        if xs == [0]:
            gate.wait(5)  # hold the first batch so the next ones queue up behind it
        calls.append(list(xs))
        return xs

    b = MicroBatcher(fn, executor=executor, max_batch=16, max_wait_ms=0, capacity=64)
    await b.start()
    try:
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.05)
        behind = [asyncio.create_task(b.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *behind)
        lone = await b.submit(42)
    finally:
        gate.set()
        await b.stop()
    assert calls == [[0], [1, 2, 3, 4, 5], [42]]
    assert lone.batch_size == 1 and lone.queue_wait_s < 0.02  # no timed wait for companions


async def test_rejects_past_capacity_immediately(executor):
    gate = threading.Event()

    def slow(xs):
        gate.wait(5)
        return xs

    b = MicroBatcher(slow, executor=executor, max_batch=1, max_wait_ms=0, capacity=2)
    await b.start()
    try:
        first = asyncio.create_task(b.submit(0))  # taken by the worker, blocks in `slow`
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]  # fill the queue
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError):
            await b.submit(3)
        assert time.perf_counter() - t0 < 0.05  # answered at once, not after the queue drains
        gate.set()
        assert [r.value for r in await asyncio.gather(first, *queued)] == [0, 1, 2]
    finally:
        gate.set()
        await b.stop()


async def test_failing_batch_fails_its_requests_not_the_worker(executor):
    def fn(xs):
        if -1 in xs:
            raise RuntimeError("bad batch")
        return xs

    b = MicroBatcher(fn, executor=executor, max_batch=1, max_wait_ms=0, capacity=8)
    await b.start()
    try:
        with pytest.raises(RuntimeError, match="bad batch"):
            await b.submit(-1)
        assert (await b.submit(5)).value == 5
    finally:
        await b.stop()
    with pytest.raises(NotRunningError):
        await b.submit(1)


async def test_stop_drains_the_running_and_the_queued_batches(executor):
    """Shutdown: jobs already accepted (one batch running, more queued) finish; new ones are refused."""
    release = threading.Event()

    def fn(xs: list[int]) -> list[int]:
        release.wait(5)
        return [x + 1 for x in xs]

    b = MicroBatcher(fn, executor=executor, max_batch=2, max_wait_ms=0, capacity=64)
    await b.start()
    jobs = [asyncio.create_task(b.submit(i)) for i in range(5)]
    await asyncio.sleep(0.05)  # the first batch is inside fn, the rest queued
    stopping = asyncio.create_task(b.stop(drain_timeout_s=5))
    await asyncio.sleep(0.05)
    with pytest.raises(NotRunningError):
        await b.submit(99)
    release.set()
    await stopping
    assert [j.result().value for j in jobs] == [1, 2, 3, 4, 5]


async def _until_taken(b: MicroBatcher) -> None:
    """Let the submit enqueue and the worker take the job; it then waits for companions, the queue empty."""
    await asyncio.sleep(0.05)
    assert b.queued == 0


async def test_stop_while_a_worker_waits_for_companions_answers_the_job_it_holds(executor):
    """Regression (CI hang): a worker holding a job while it waits max_wait for companions leaves the queue
    empty; stop must still wait for that job, not cancel the worker and leave the request hanging."""
    b = MicroBatcher(lambda xs: [x * 2 for x in xs], executor=executor, max_batch=16, max_wait_ms=300,
                     capacity=8)
    await b.start()
    job = asyncio.create_task(b.submit(21))
    await _until_taken(b)
    await b.stop(drain_timeout_s=5)
    assert (await asyncio.wait_for(job, 1)).value == 42


async def test_stop_past_the_drain_timeout_fails_the_held_job_instead_of_hanging(executor):
    b = MicroBatcher(lambda xs: xs, executor=executor, max_batch=16, max_wait_ms=5000, capacity=8)
    await b.start()
    job = asyncio.create_task(b.submit(1))
    await _until_taken(b)
    await b.stop(drain_timeout_s=0)
    with pytest.raises(NotRunningError, match="stopped"):  # failed while held, not refused at submit
        await asyncio.wait_for(job, 1)


async def test_greedy_runs_a_lone_request_in_its_own_task_within_the_slots():
    """Greedy policy: a request that finds a free slot and nobody queued runs at once (no worker hand-off);
    never more batches at once than slots, and what queues behind full slots runs as one batch."""
    ex = ThreadPoolExecutor(2)
    gate = threading.Event()
    running, peak, calls = [0], [0], []
    lock = threading.Lock()

    def fn(xs: list[int]) -> list[int]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            calls.append(list(xs))  # in the order the batches start
        if xs[0] < 2:
            gate.wait(5)  # hold both slots
        with lock:
            running[0] -= 1
        return [x * 3 for x in xs]

    b = MicroBatcher(fn, executor=ex, max_batch=16, max_wait_ms=0, capacity=64, workers=2)
    await b.start()
    try:
        held = [asyncio.create_task(b.submit(i)) for i in (0, 1)]
        await asyncio.sleep(0.05)
        assert b._free == 0 and b.queued == 0  # both ran at once, each in its own task
        behind = [asyncio.create_task(b.submit(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0.05)
        assert b.queued + sum(len(h) for h in b._in_hand) == 3  # no slot: they wait
        gate.set()
        out = await asyncio.gather(*held, *behind)
        lone = await b.submit(7)
    finally:
        gate.set()
        await b.stop()
        ex.shutdown(wait=False)
    assert [r.value for r in out] == [0, 3, 6, 9, 12] and lone.value == 21
    assert out[0].batch_size == 1 and out[0].queue_wait_s == 0.0 and lone.queue_wait_s == 0.0
    assert sorted(map(sorted, calls[:2])) == [[0], [1]] and [2, 3, 4] in calls and peak[0] == 2
    assert b._free == 2  # every slot back


async def test_a_failed_or_cancelled_direct_run_gives_its_slot_back(executor):
    release = threading.Event()

    def fn(xs: list[int]) -> list[int]:
        if xs == [-1]:
            raise RuntimeError("bad batch")
        if xs == [-2]:
            release.wait(5)
        return xs

    b = MicroBatcher(fn, executor=executor, max_batch=4, max_wait_ms=0, capacity=8)
    await b.start()
    try:
        with pytest.raises(RuntimeError, match="bad batch"):
            await b.submit(-1)
        slow = asyncio.create_task(b.submit(-2))
        await asyncio.sleep(0.05)
        slow.cancel()  # the client went away mid-inference
        with pytest.raises(asyncio.CancelledError):
            await slow
        release.set()
        assert b._free == 1
        assert (await b.submit(5)).value == 5
    finally:
        release.set()
        await b.stop()


async def test_stop_waits_for_a_request_running_in_its_own_task(executor):
    release = threading.Event()
    b = MicroBatcher(lambda xs: (release.wait(5), xs)[1], executor=executor, max_batch=4, max_wait_ms=0,
                     capacity=8)
    await b.start()
    job = asyncio.create_task(b.submit(9))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(b.stop(drain_timeout_s=5.0))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the running request holds the drain
    release.set()
    await stopping
    assert (await job).value == 9
