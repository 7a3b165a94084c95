"""Fetch users' reasoning matrices (and stored histories) from the reasoning store under a deadline.

One async client per process, one MGET per request (or batch), explicit timeouts, no retry loop, and a
circuit breaker: when Redis is down the service keeps answering (without reasoning) inside its deadline
instead of queueing behind dead connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from scoter.reasoning_store import (
    ReasoningFormatError,
    StoredMatrix,
    history_key,
    read_header,
    reasoning_key,
)

log = logging.getLogger(__name__)

ReasoningStatus = Literal["hit", "miss", "stale", "error"]
BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (reset_s) -> half_open: one probe -> closed or open."""

    def __init__(self, failure_threshold: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to Redis now (in half-open, only one probe at a time)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_s:
            self._state, self._probe_out = "half_open", False
        if self._state == "closed":
            return True
        if self._state == "half_open" and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def record_success(self) -> None:
        if self._state != "closed":
            log.info("reasoning store reachable again: circuit closed")
        self._state, self._failures, self._probe_out = "closed", 0, False

    def record_failure(self) -> None:
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            if self._state != "open":
                log.warning("reasoning store failing (%d in a row): circuit open for %.1fs",
                            self._failures, self.reset_s)
            self._state, self._opened_at, self._probe_out = "open", self._clock(), False


@dataclass(frozen=True)
class ReasoningSpec:
    """What the serving model expects: the store's reasoning version and the matrix shape K x D."""

    version: str
    k: int
    d: int


@dataclass(frozen=True)
class UserFetch:
    reasoning: StoredMatrix | None  # (K, D) still as stored bytes (the batch converts), only when "hit"
    status: ReasoningStatus
    history: list[str] | None  # item ids from the store (newest last), when asked for and present


def make_client(url: str, *, cluster: bool, connect_timeout: float, socket_timeout: float,
                max_connections: int) -> Redis | RedisCluster:
    """One client with explicit timeouts and no retries (the deadline and breaker handle failure)."""
    common = dict(socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout,
                  retry=Retry(NoBackoff(), 0), max_connections=max_connections)
    if cluster:
        return RedisCluster.from_url(url, **common)
    return Redis.from_url(url, health_check_interval=0, **common)


class HeldConnections:
    """MGET on connections taken from the client's pool once and kept checked out between fetches.

    Why: on an idle server every layer is a cold pass through Python, and redis-py 8's per-command path costs
    more than the round trip itself: the pool's lock, connection-count bookkeeping and a readability probe of
    the socket on every checkout, and with a socket timeout a new task per write (`asyncio.wait_for`) and a
    timer per read. Held connections skip the checkout, and carry no socket timeout while held: the fetch's
    own deadline bounds every call. Measured with `benchmarks/redis_fetch.py` (one key, paced at 10 calls/s):
    BENCHMARKS.md. Connections are still created, connected and counted by the pool (its `max_connections`
    is the bound); a call that fails or is cancelled mid-reply drops its connection (the stream state is
    unknown) and hands it back to the pool.
    """

    def __init__(self, client: Redis):
        self._pool = client.connection_pool
        self._idle: list = []

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not self._idle:
            return await self._call(await self._checkout(), keys)
        try:
            return await self._call(self._idle.pop(), keys)
        except (RedisConnectionError, OSError):  # an idle connection the server closed (restart, idle timeout)
            return await self._call(await self._checkout(), keys)  # one fresh try, inside the same deadline

    async def _checkout(self):
        conn = await self._pool.get_connection("MGET")
        conn.held_socket_timeout, conn.socket_timeout = conn.socket_timeout, None
        return conn

    async def _call(self, conn, keys: list[str]) -> list[bytes | None]:
        try:
            await conn.send_packed_command(conn.pack_command("MGET", *keys), check_health=False)
            values = await conn.read_response()
        except BaseException:  # failed or cancelled by the deadline: never reuse a half-read connection
            await self._drop(conn)
            raise
        self._idle.append(conn)
        return values

    async def _drop(self, conn) -> None:
        await conn.disconnect(nowait=True)
        await self._release(conn)

    async def _release(self, conn) -> None:
        conn.socket_timeout = conn.held_socket_timeout  # back to the pool as the client configured it
        await self._pool.release(conn)

    async def close(self) -> None:
        """Hand every held connection back to the pool (the client's `aclose` then closes them)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._release(conn)


class ReasoningFetcher:
    """MGET of reasoning values (+ histories) with a per-request deadline, header checks and a breaker."""

    def __init__(self, client: Redis | RedisCluster, *, max_age_s: int, deadline_ms: float,
                 breaker: CircuitBreaker, on_failure: Callable[[str], None] | None = None):
        self.client = client
        self._held = None if isinstance(client, RedisCluster) else HeldConnections(client)
        self.max_age_s = max_age_s
        self.deadline_s = deadline_ms / 1000.0
        self.breaker = breaker
        self._on_failure = on_failure or (lambda kind: None)

    @property
    def degraded(self) -> bool:
        return self.breaker.state == "open"

    async def fetch(self, user_ids: list[str], need_history: list[bool], spec: ReasoningSpec) -> list[UserFetch]:
        """One MGET for all users' reasoning (and the stored histories asked for); never raises on outage."""
        keys = [reasoning_key(spec.version, u) for u in user_ids]
        hist_users = [u for u, need in zip(user_ids, need_history, strict=True) if need]
        keys += [history_key(u) for u in hist_users]
        values = await self._mget(keys)
        if values is None:
            return [UserFetch(None, "error", None) for _ in user_ids]
        n = len(user_ids)
        hist = dict(zip(hist_users, values[n:], strict=True))
        return [UserFetch(*self._reasoning(values[i], spec), self._history(hist.get(u)) if need_history[i] else None)
                for i, u in enumerate(user_ids)]

    async def _mget(self, keys: list[str]) -> list[bytes | None] | None:
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.deadline_s):
                if self._held is None:  # cluster: keys on several nodes, the cluster client routes them
                    values = await self.client.mget_nonatomic(keys)
                else:
                    values = await self._held.mget(keys)
        except (TimeoutError, RedisError, OSError) as exc:
            self.breaker.record_failure()
            self._on_failure("redis_timeout" if isinstance(exc, TimeoutError) else "redis")
            log.debug("reasoning fetch failed: %r", exc)
            return None
        self.breaker.record_success()
        return values

    def _reasoning(self, value: bytes | None, spec: ReasoningSpec) -> tuple[StoredMatrix | None, ReasoningStatus]:
        if value is None:
            return None, "miss"
        try:
            rv = read_header(value, expect_k=spec.k, expect_d=spec.d)
        except ReasoningFormatError as exc:
            self._on_failure("reasoning_format")
            log.debug("bad reasoning value: %s", exc)
            return None, "error"
        if time.time() - rv.created_at > self.max_age_s:
            return None, "stale"
        return rv.matrix, "hit"

    def _history(self, value: bytes | None) -> list[str] | None:
        if value is None:
            return None
        try:
            items = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            items = None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            self._on_failure("history_format")
            return None
        return items

    async def ping(self) -> bool:
        """Readiness probe: True when Redis answers within the deadline."""
        try:
            async with asyncio.timeout(max(self.deadline_s, 0.2)):
                await self.client.ping()
            return True
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._held is not None:
            await self._held.close()
        await self.client.aclose()
