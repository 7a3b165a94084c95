"""Fetch users' reasoning matrices (and stored histories) from the reasoning store under a deadline.

One async client per process, one MGET per request (or batch), explicit timeouts, no retry loop, and a
circuit breaker: when Redis is down the service keeps answering (without reasoning) inside its deadline
instead of queueing behind dead connections.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import TypeAdapter, ValidationError
from redis.asyncio import BlockingConnectionPool, Redis
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

# A value written by a clock this far ahead of ours is still accepted (skew between hosts); anything later is
# malformed: it would otherwise never go stale.
FUTURE_SKEW_S = 300
# A stored history is parsed by pydantic-core's JSON parser (bounded recursion: a deeply nested value is an
# error, not a crash) after this size check, so a huge value costs one length test, not a parse.
MAX_STORED_HISTORY_BYTES = 1 << 20
_HISTORY = TypeAdapter(list[str])


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

    def release_probe(self) -> None:
        """A call that proved nothing about the store (cut short by this process): in half-open, let the next
        call probe instead."""
        self._probe_out = False

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
    max_history: int | None = None  # a stored history is cut to its newest `max_history` items


@dataclass(frozen=True)
class UserFetch:
    reasoning: StoredMatrix | None  # (K, D) still as stored bytes (the batch converts), only when "hit"
    status: ReasoningStatus
    history: list[str] | None  # item ids from the store (newest last), when asked for and present


def make_client(url: str, *, cluster: bool, connect_timeout: float, socket_timeout: float,
                max_connections: int) -> Redis | RedisCluster:
    """One client with explicit timeouts and no retries (the deadline and breaker handle failure).

    The single-node pool blocks when all `max_connections` are in use: a fetch waits for a free connection
    inside its own deadline instead of failing at once with "Too many connections"."""
    common = dict(socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout,
                  retry=Retry(NoBackoff(), 0))
    if cluster:
        return RedisCluster.from_url(url, max_connections=max_connections, **common)
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=None,
                                           health_check_interval=0, **common)
    return Redis.from_pool(pool)


class _Phase:
    """Where one fetch is, so a deadline that expires can be told apart: waiting for a free pool connection
    (exhaustion: the process is busy, Redis is fine), waiting for Redis, or Redis had answered and this
    process was too busy to read the reply in time."""

    __slots__ = ("where",)

    def __init__(self) -> None:
        self.where = "pool"


def _reply_waiting(conn) -> bool:
    """Whether a reply sits unread in the connection's buffer or socket (checked only once a deadline expired)."""
    try:
        reader = getattr(conn, "_reader", None)
        if reader is not None and len(getattr(reader, "_buffer", b"")) > 0:
            return True
        writer = getattr(conn, "_writer", None)
        sock = writer.get_extra_info("socket") if writer is not None else None
        if sock is None:
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)
    except (OSError, ValueError, AttributeError):
        return False


class HeldConnections:
    """MGET on connections taken from the client's pool once and kept checked out between fetches.

    Why: on an idle server every layer is a cold pass through Python, and redis-py 8's per-command path costs
    more than the round trip itself: the pool's lock, connection-count bookkeeping and a readability probe of
    the socket on every checkout, and with a socket timeout a new task per write (`asyncio.wait_for`) and a
    timer per read. Held connections skip the checkout, and carry no socket timeout while held: the fetch's
    own deadline bounds every call. Measured with `benchmarks/redis_fetch.py` (one key, paced at 10 calls/s):
    BENCHMARKS.md. Connections are still created, connected and counted by the pool (its `max_connections`
    is the bound); a call that fails or is cancelled mid-reply drops its connection (the stream state is
    unknown) and hands it back to the pool. At most `max_idle` are kept between fetches: the connections a
    burst took go back to the pool once it is over, so the pool never stays drained by idle held ones.
    """

    def __init__(self, client: Redis, max_idle: int = 4):
        self._pool = client.connection_pool
        self._idle: list = []
        self.max_idle = max_idle

    async def mget(self, keys: list[str], phase: _Phase | None = None) -> list[bytes | None]:
        phase = phase or _Phase()
        if not self._idle:
            return await self._call(await self._checkout(), keys, phase)
        phase.where = "redis"
        try:
            return await self._call(self._idle.pop(), keys, phase)
        except (RedisConnectionError, OSError):  # an idle connection the server closed (restart, idle timeout)
            phase.where = "pool"
            return await self._call(await self._checkout(), keys, phase)  # one fresh try, same deadline

    async def _checkout(self):
        conn = await self._pool.get_connection()
        conn.held_socket_timeout, conn.socket_timeout = conn.socket_timeout, None
        return conn

    async def _call(self, conn, keys: list[str], phase: _Phase) -> list[bytes | None]:
        phase.where = "redis"
        try:
            await conn.send_packed_command(conn.pack_command("MGET", *keys), check_health=False)
            values = await conn.read_response()
        except BaseException:  # failed or cancelled by the deadline: never reuse a half-read connection
            if _reply_waiting(conn):
                phase.where = "late_read"
            await self._drop(conn)
            raise
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            await self._release(conn)
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
                 breaker: CircuitBreaker, on_failure: Callable[[str], None] | None = None,
                 probe_client: Redis | RedisCluster | None = None, probe_timeout_s: float = 1.0,
                 max_held: int = 4):
        self.client = client
        # readiness pings on a client of its own: a burst holding every fetch connection never reads as an outage
        self.probe_client = probe_client
        self.probe_timeout_s = probe_timeout_s
        self._held = None if isinstance(client, RedisCluster) else HeldConnections(client, max_held)
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
        keys += [history_key(spec.version, u) for u in hist_users]  # histories live under the same version
        values = await self._mget(keys)
        if values is None:
            return [UserFetch(None, "error", None) for _ in user_ids]
        n = len(user_ids)
        hist = dict(zip(hist_users, values[n:], strict=True))
        return [UserFetch(*self._reasoning(values[i], spec),
                          self._history(hist.get(u), spec.max_history) if need_history[i] else None)
                for i, u in enumerate(user_ids)]

    async def _mget(self, keys: list[str]) -> list[bytes | None] | None:
        if not self.breaker.allow():
            return None
        phase = _Phase()
        try:
            async with asyncio.timeout(self.deadline_s):
                if self._held is None:  # cluster: keys on several nodes, the cluster client routes them
                    phase.where = "redis"
                    values = await self.client.mget_nonatomic(keys)
                else:
                    values = await self._held.mget(keys, phase)
        except (TimeoutError, RedisError, OSError) as exc:
            if isinstance(exc, TimeoutError) and phase.where != "redis":
                # this process was the bottleneck (no free connection, or the reply sat unread): not an outage
                self.breaker.release_probe()
                self._on_failure("redis_pool_exhausted" if phase.where == "pool" else "redis_read_late")
                log.debug("reasoning fetch cut by its deadline while %s", phase.where)
                return None
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
        now = time.time()
        if rv.created_at > now + FUTURE_SKEW_S:  # from the future: malformed (it would never go stale)
            self._on_failure("reasoning_format")
            log.debug("bad reasoning value: created_at %d is in the future", rv.created_at)
            return None, "error"
        if now - rv.created_at > self.max_age_s:
            return None, "stale"
        return rv.matrix, "hit"

    def _history(self, value: bytes | None, max_items: int | None) -> list[str] | None:
        """The stored item ids (newest last, cut to `max_items`); a malformed value is counted and read as
        no history."""
        if value is None:
            return None
        if len(value) > MAX_STORED_HISTORY_BYTES:
            self._on_failure("history_format")
            log.debug("stored history of %d bytes refused", len(value))
            return None
        try:
            items = _HISTORY.validate_json(value)
        except ValidationError:
            self._on_failure("history_format")
            return None
        return items[-max_items:] if max_items else items

    async def ping(self) -> bool:
        """Readiness probe: True when Redis answers within the probe timeout (on its own client when given)."""
        try:
            async with asyncio.timeout(max(self.deadline_s, self.probe_timeout_s)):
                await (self.probe_client or self.client).ping()
            return True
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._held is not None:
            await self._held.close()
        await self.client.aclose()
        if self.probe_client is not None:
            await self.probe_client.aclose()
