"""Exposure events: one per served response and experiment the user is in, written off the request's path.

Why events and not a counter: the analysis joins outcomes to each user's first exposure and counts unique users
for SRM; a request counter cannot do either. The request path only appends to a bounded in-memory buffer (no
I/O, no await); a writer thread formats and writes batches to a Redis Stream (XADD with an approximate
MAXLEN, so the stream stays bounded) and, optionally, to a JSONL file. A full buffer or a failed write drops
events, counted in `scoter_exposure_events_total{outcome="dropped"}`; a request never waits for either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import redis
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.experiments import Assignment

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def request_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is a plain token (so it can key a join), else a fresh one."""
    if incoming is not None and _REQUEST_ID_OK.match(incoming):
        return incoming
    return uuid.uuid4().hex


def request_ids(incoming: str | None, n: int) -> list[str]:
    """One id per result: the request's own for a single result, `<id>.<index>` for each of a batch's."""
    base = request_id(incoming)
    return [base] if n == 1 else [f"{base}.{i}" for i in range(n)]


class ExposureSettings(BaseSettings):
    """Exposure logging knobs (env prefix `SCOTER_EXPOSURES_`)."""

    model_config = SettingsConfigDict(env_prefix="SCOTER_EXPOSURES_", extra="ignore")

    enabled: bool = True
    redis_url: str | None = Field(None, description="default: the service's SCOTER_REDIS_URL")
    stream: str = Field("scoter:exposures", min_length=1)
    maxlen: int = Field(1_000_000, ge=1000, description="approximate stream length cap (XADD MAXLEN ~)")
    jsonl: Path | None = Field(None, description="also append events to this file, one JSON object a line")
    cluster: bool = Field(False, description="the stream's Redis is a cluster (RedisCluster client)")
    buffer: int = Field(100_000, ge=1, description="responses held in memory before new ones are dropped")
    batch: int = Field(1000, ge=1, description="most events per write")
    flush_interval_s: float = Field(0.05, gt=0)
    write_timeout_s: float = Field(0.5, gt=0, description="socket timeout of the exposure Redis client")


class Result(Protocol):  # the parts of serving.RecResult an event needs
    user_id: str
    items: list[tuple[str, float]]
    assignment: Assignment
    model_id: str
    model_version: str
    reasoning: str
    history_length: int


class ExposureLog:
    """Buffer + writer thread. `emit` is the request path's only call (a deque append per response).

    The writer is a thread with redis-py's synchronous client, not a task on the event loop: packing a pipeline
    of XADDs costs about a third as much CPU there as with the asyncio client (measured, benchmarks/
    ab_exposure_cost.py), and what it does run never sits between the loop and a request's next step."""

    def __init__(self, settings: ExposureSettings, default_redis_url: str, events: Counter,
                 exposures_counter: Counter | None = None):
        self.settings = settings
        self.redis_url = settings.redis_url or default_redis_url
        self._buf: deque[tuple[str, float, Any, str]] = deque()  # append/popleft are thread-safe
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | redis.RedisCluster | None = None
        self._stop = threading.Event()
        self._write_lock = threading.Lock()  # the thread and `flush` never write the same batch twice
        self.events = events  # scoter_exposure_events_total{sink, outcome}
        self._counted = exposures_counter  # scoter_exposures_total{experiment, variant}: exposures per request
        self._children: dict[tuple[str, str], Any] = {}
        self._dropped_full = self.events.labels("buffer", "dropped")
        self._last_warning = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    # ---- request path ----------------------------------------------------------------------------------
    def emit(self, request_ids: Sequence[str], results: Sequence[Result], config_version: str) -> None:
        """Queue one event per (response, experiment membership); forced and out-of-experiment responses have
        no membership. Never blocks, never raises on a full buffer (counts the drop)."""
        now = time.time()
        for rid, res in zip(request_ids, results, strict=True):
            a = res.assignment
            if a.forced or not a.memberships:
                continue
            if self._counted is not None:
                for m in a.memberships:
                    key = (m.experiment, m.variant)
                    child = self._children.get(key)
                    if child is None:
                        child = self._children[key] = self._counted.labels(m.experiment, m.variant)
                    child.inc()
            if not self.settings.enabled:
                continue
            if len(self._buf) >= self.settings.buffer:
                self._dropped_full.inc(len(a.memberships))
                continue
            self._buf.append((rid, now, res, config_version))

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.settings.enabled or self._thread is not None:
            return
        s = self.settings
        self._stop.clear()
        cls = redis.RedisCluster if s.cluster else redis.Redis
        self._client = cls.from_url(self.redis_url, socket_timeout=s.write_timeout_s,
                                    socket_connect_timeout=s.write_timeout_s)
        if s.jsonl is not None:
            s.jsonl.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="exposure-writer", daemon=True)
        self._thread.start()
        log.info("exposure events -> redis stream %s (MAXLEN ~%d)%s", s.stream, s.maxlen,
                 f" and {s.jsonl}" if s.jsonl else "")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is buffered (up to `timeout_s`), then close; what is left is counted as dropped."""
        if self._thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(self._thread.join, timeout_s)
        if self._thread.is_alive():  # still writing (a hung Redis): leave it, count what it could not take
            left = sum(len(e[2].assignment.memberships) for e in list(self._buf))
            self._buf.clear()
            if left:
                self._dropped_full.inc(left)
                log.warning("exposure writer stopped with %d events unwritten (dropped)", left)
        else:
            assert self._client is not None
            self._client.close()
        self._thread = None
        self._client = None

    async def flush(self) -> None:
        """Write everything buffered now (tests, shutdown), off the event loop."""
        await asyncio.to_thread(self._drain)

    # ---- writer thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain()
            self._stop.wait(self.settings.flush_interval_s)
        self._drain()

    def _drain(self) -> None:
        # the lock around the whole loop: a flush waits for a batch the writer thread has taken but not yet
        # counted (written or dropped), so what it reports afterwards is final
        with self._write_lock:
            while self._buf:
                self._write_batch()

    def _take(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while self._buf and len(events) < self.settings.batch:
            try:
                rid, ts, res, version = self._buf.popleft()
            except IndexError:  # emptied by the other writer between the check and the pop
                break
            a = res.assignment
            items = json.dumps([i for i, _ in res.items])
            for m in a.memberships:
                events.append({"request_id": rid, "ts": f"{ts:.6f}", "user_id": res.user_id,
                               "experiment": m.experiment, "variant": m.variant, "model_id": res.model_id,
                               "model_version": res.model_version, "reasoning": res.reasoning,
                               "history_length": str(res.history_length), "config_version": version,
                               "items": items})
        return events

    def _write_batch(self) -> None:
        events = self._take()
        if not events:
            return
        s = self.settings
        try:
            assert self._client is not None
            pipe = self._client.pipeline(transaction=False)
            for e in events:
                pipe.xadd(s.stream, e, maxlen=s.maxlen, approximate=True)
            pipe.execute()
            self.events.labels("redis", "written").inc(len(events))
        except Exception as exc:  # a down or slow Redis costs these events, never a request
            self.events.labels("redis", "dropped").inc(len(events))
            self._warn(f"exposure write to redis failed ({type(exc).__name__}: {exc}); {len(events)} dropped")
        if s.jsonl is not None:
            try:
                _append_lines(s.jsonl, events)
                self.events.labels("jsonl", "written").inc(len(events))
            except OSError as exc:
                self.events.labels("jsonl", "dropped").inc(len(events))
                self._warn(f"exposure write to {s.jsonl} failed ({exc}); {len(events)} dropped")

    def _warn(self, msg: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:  # one line per 10 s during an outage, not one per batch
            self._last_warning = now
            log.warning(msg)


def _append_lines(path: Path, events: list[dict[str, Any]]) -> None:
    """Whole lines in one write, so a reader never sees half an event from this process."""
    data = "".join(json.dumps(_typed(e), separators=(",", ":")) + "\n" for e in events)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)


def _typed(e: dict[str, Any]) -> dict[str, Any]:
    """A stream entry's string fields as JSON types (the same shape `read_stream` returns)."""
    return {**e, "ts": float(e["ts"]), "history_length": int(e["history_length"]), "items": json.loads(e["items"])}


def decode_entry(fields: dict[bytes | str, bytes | str]) -> dict[str, Any]:
    """One XRANGE entry -> the event dict (JSON types), as in the JSONL file."""
    e = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    return _typed(e)


def is_stream_url(source: str) -> bool:
    return source.startswith(("redis://", "rediss://", "unix://"))


def read_stream(url: str, chunk: int = 10_000) -> Iterator[dict[str, Any]]:
    """Every event of a stream, oldest first: `redis://host:port/db?stream=KEY` (default key scoter:exposures),
    read with XRANGE in chunks so a long stream never sits in one reply."""
    parsed = urlparse(url)
    stream = parse_qs(parsed.query).get("stream", ["scoter:exposures"])[0]
    client = redis.Redis.from_url(parsed._replace(query="").geturl(), socket_timeout=10)
    start = "-"
    try:
        while True:
            batch = client.xrange(stream, min=start, max="+", count=chunk)
            for _, fields in batch:
                yield decode_entry(fields)
            if len(batch) < chunk:
                return
            ms, seq = batch[-1][0].decode().split("-")
            start = f"{ms}-{int(seq) + 1}"
    finally:
        client.close()
