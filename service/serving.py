"""The request path: A/B assignment -> store fetch -> micro-batched ONNX ranking -> external item ids.

`Recommender` serves requests against the current serving state (`service.state`: the experiments config and
one warm bundle and batcher per variant, swapped whole on reload, so a request sees either the old or the new
config, never a mix). A served request is finished for its users in one place, `Recommender.finish`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from scoter.ranker import ServingBundle
from scoter.reasoning_store import StoredMatrix
from service.batcher import QueueTimeoutError
from service.experiments import Assignment
from service.exposures import REQUEST_ID_HEADER, ExposureLog, ExposureSettings, request_ids
from service.loop_lag import LoopLagMonitor
from service.metrics import ServiceMetrics
from service.reasoning_fetch import (
    CircuitBreaker,
    ReasoningFetcher,
    ReasoningSpec,
    ReasoningStatus,
    UserFetch,
    make_client,
)
from service.settings import ServiceSettings
from service.state import ServingState, ServingStates, VariantRuntime

log = logging.getLogger(__name__)
T = TypeVar("T")


class RequestError(ValueError):
    """Bad input found after schema validation (unknown item, k above beam...): answered 422 naming the field."""

    def __init__(self, loc: list[str | int], msg: str):
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


class LoopLagError(QueueTimeoutError):
    """The event loop runs later than the queue deadline: a new request would not start in time."""

    reason = "loop_lag"


class NotReadyError(RuntimeError):
    """No serving state yet (starting) or it is being torn down."""


@dataclass
class Row:
    history: list[int]  # item indices, newest last, at most T (the batch left-pads them with 0)
    reasoning: StoredMatrix | None  # [K, D] still as stored bytes: the batch converts


@dataclass(frozen=True)
class Ranked:
    """One row's ranking; `reasoning_error`: the row's matrix was unusable (not finite, or it made the scores
    non-finite) and the row was ranked without it."""

    ids: list[int]
    scores: list[float]
    reasoning_error: bool = False


@dataclass
class RecRequest:
    user_id: str
    history: list[str] | None
    k: int
    exclude_seen: bool


@dataclass
class RecResult:
    user_id: str
    items: list[tuple[str, float]]
    assignment: Assignment
    model_id: str
    model_version: str
    reasoning: ReasoningStatus
    history_source: str  # request | store | none
    history_length: int  # items the model saw (after truncation to T)
    redis_s: float = 0.0  # stage times, for the metrics (`Recommender.record`)
    queue_s: float = 0.0
    inference_s: float = 0.0


def _rank_batch(bundle: ServingBundle, rows: list[Row]) -> list[Ranked | BaseException]:
    """Build the [B, ...] arrays and run the graph once (worker thread). Every array is made here, none per
    request on the event loop: a numpy call there costs ~50-100 us when the loop's caches are cold (low load).

    One bad row never fails the batch: each stored matrix is checked here, per row (a non-finite one is that
    row's reasoning error, ranked without it), a row whose scores come out non-finite is ranked again without
    its reasoning, and if the batch run itself fails, every row is run alone so only the guilty one errs."""
    n = len(rows)
    hist = np.zeros((n, bundle.max_len), np.int64)
    reasoning = np.zeros((n, bundle.k, bundle.d), np.float32)
    present = np.zeros(n, bool)
    bad = [False] * n
    for i, r in enumerate(rows):
        if r.history:
            hist[i, -len(r.history):] = r.history
        if r.reasoning is not None:
            value = r.reasoning.array()
            if np.isfinite(value).all():
                reasoning[i], present[i] = value, True
            else:
                bad[i] = True
    try:
        ids, scores = bundle.run(hist, hist > 0, reasoning, present)
    except Exception as exc:
        if n == 1:
            return [exc]
        log.warning("batch of %d failed (%s); ranking its rows one by one", n, exc)
        out: list[Ranked | BaseException] = []
        for i in range(n):
            one = _rank_batch(bundle, [rows[i]])[0]
            out.append(one if isinstance(one, BaseException) or not bad[i] else
                       Ranked(one.ids, one.scores, reasoning_error=True))
        return out
    finite = _scores_ok(ids, scores)
    out = [Ranked(i_, s_, b_) for i_, s_, b_ in zip(ids.tolist(), scores.tolist(), bad, strict=True)]
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            out[i] = _without_reasoning(bundle, hist[i:i + 1], present[i])
    return out  # plain lists: no numpy left for the loop


def _scores_ok(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per row: every real item's score is finite. Padding (item 0 at -inf) is legitimate: a catalogue with fewer
    items left than beams once the history's own items are excluded."""
    return (np.isfinite(scores) | ((ids == 0) & np.isneginf(scores))).all(axis=1)


def _without_reasoning(bundle: ServingBundle, hist: np.ndarray, had_reasoning: bool) -> Ranked | BaseException:
    """A row whose scores were not finite: ranked again without its reasoning (the usual culprit)."""
    if not had_reasoning:
        return FloatingPointError("the model gave non-finite scores for this history")
    ids, scores = bundle.run(hist, hist > 0, np.zeros((1, bundle.k, bundle.d), np.float32), np.zeros(1, bool))
    if not _scores_ok(ids, scores).all():
        return FloatingPointError("the model gave non-finite scores for this history")
    return Ranked(ids[0].tolist(), scores[0].tolist(), reasoning_error=True)


async def _await_all(aws: list[Coroutine[Any, Any, T]]) -> list[T]:
    """`asyncio.gather`, except that one awaitable (the common single request) is awaited directly: no task,
    one event-loop iteration less per request (measured: overhead 27.6-29.6% -> 25.7-26.7% of model time)."""
    if len(aws) == 1:
        return [await aws[0]]
    return list(await asyncio.gather(*aws))


class Recommender:
    """Serving state, store client and the recommend path for one process."""

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="onnx")
        self.breaker = CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_reset_s)
        def client(max_connections: int, socket_timeout: float):
            return make_client(settings.redis_url, cluster=settings.redis_cluster,
                               connect_timeout=settings.redis_connect_timeout_s, socket_timeout=socket_timeout,
                               max_connections=max_connections)

        self.fetcher = ReasoningFetcher(
            client(settings.redis_max_connections, settings.redis_socket_timeout_s),
            max_age_s=settings.reasoning_max_age_s, deadline_ms=settings.redis_deadline_ms,
            breaker=self.breaker, on_failure=self._store_failure,
            probe_client=client(2, settings.readiness_timeout_s), probe_timeout_s=settings.readiness_timeout_s,
            max_held=settings.redis_held_connections)
        self._api_keys = [k.get_secret_value().encode() for k in settings.api_keys]
        self.loop_lag = LoopLagMonitor(on_sample=metrics.loop_lag.set)
        self._lag_limit_s = settings.loop_lag_shed_ms / 1000.0 if settings.loop_lag_shed_ms else None
        self.states = ServingStates(settings, metrics, self.executor, _rank_batch)
        self.warm = False
        self.exposures = ExposureLog(ExposureSettings(), settings.redis_url, metrics.exposure_events,
                                     metrics.exposures)

    # ---- lifecycle (the state itself: service.state) ----------------------------------------------------
    @property
    def state(self) -> ServingState | None:
        return self.states.current

    async def start(self) -> None:
        self.loop_lag.start()
        state = await self.states.start()
        await self.exposures.start()
        self.warm = True
        log.info("serving config %s with variants %s", state.loaded.version, list(state.variants))

    async def reload(self) -> ServingState:
        """Re-read the config; load new/changed bundles warm, then swap atomically. Raises ValueError if bad."""
        old, new = await self.states.reload()
        log.info("reloaded config: version %s -> %s, variants %s", old.loaded.version if old else None,
                 new.loaded.version, list(new.variants))
        return new

    async def stop(self) -> None:
        self.warm = False
        await self.loop_lag.stop()
        await self.states.stop(drain_timeout_s=self.settings.drain_timeout_s)  # queued jobs finish first
        await self.exposures.stop()
        await self.fetcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def install_sighup(self) -> bool:
        """SIGHUP -> reload (main thread only); returns whether the handler was installed."""
        return self.states.install_sighup(self.reload)

    def remove_sighup(self) -> None:
        self.states.remove_sighup()

    # ---- request path ----------------------------------------------------------------------------------
    def _store_failure(self, kind: str) -> None:
        self.metrics.errors.labels(kind).inc()
        self.metrics.redis_degraded.set(1 if self.breaker.state == "open" else 0)

    def _spec(self, rt: VariantRuntime) -> ReasoningSpec:
        version = self.settings.reasoning_version or rt.bundle.reasoning_version
        return ReasoningSpec(version, rt.bundle.k, rt.bundle.d, max_history=self.settings.max_history)

    def require_state(self) -> ServingState:
        if self.state is None or not self.warm:
            raise NotReadyError("service is not ready")
        return self.state

    def admit(self) -> None:
        """Refuse a new request at once (QueueTimeoutError) while the event loop runs later than the queue
        deadline: it could not start in time, and refusing costs the loop less than serving late."""
        if self._lag_limit_s is not None and self.loop_lag.lag_s > self._lag_limit_s:
            raise LoopLagError(f"event loop {self.loop_lag.lag_s * 1000:.0f} ms late")

    def authenticate(self, headers) -> bool | None:
        """None: no keys configured (auth off); else whether the request carries one of the keys
        (`Authorization: Bearer <key>` or `X-API-Key`). Every key is compared, in constant time each, so the
        time taken does not tell which key or how much of it matched."""
        keys = self._api_keys
        if not keys:
            return None
        given = headers.get("x-api-key")
        if given is None:
            scheme, _, value = (headers.get("authorization") or "").partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else None
        if not given:
            return False
        candidate = given.encode()
        ok = False
        for key in keys:
            ok |= secrets.compare_digest(candidate, key)
        return ok

    def finish(self, results: list[RecResult], total_s: float, headers, config_version: str) -> list[str]:
        """The one place a served request is finished, per user, before its response is written: metrics and
        exposure events (queued, written off the request's path). Returns each result's request id."""
        self.record(results, total_s)
        ids = request_ids(headers.get(REQUEST_ID_HEADER), len(results))
        self.exposures.emit(ids, results, config_version)
        return ids

    def check_admin(self, token: str | None) -> bool:
        expected = self.settings.admin_token
        return bool(token) and expected is not None and secrets.compare_digest(
            token.encode(), expected.get_secret_value().encode())

    def assign(self, state: ServingState, user_id: str, forced_variant: str | None) -> Assignment:
        exp = state.loaded.config.active
        if forced_variant is not None:
            if forced_variant not in state.variants:
                raise RequestError(["header", "X-Scoter-Variant"],
                                   f"unknown variant {forced_variant!r} (have {sorted(state.variants)})")
            return Assignment(exp.key, forced_variant, False, forced=True)
        return state.loaded.assigner.assign(user_id)

    def record(self, results: list[RecResult], total_s: float) -> None:
        """Stage times and reasoning outcomes of the requests just served (exposures: `self.exposures.emit`)."""
        m = self.metrics
        for res in results:
            v = res.assignment.variant
            m.child(m.stage_seconds, "redis", v).observe(res.redis_s)
            m.child(m.stage_seconds, "queue", v).observe(res.queue_s)
            m.child(m.stage_seconds, "inference", v).observe(res.inference_s)
            m.child(m.reasoning, res.reasoning, v).inc()
        for v in {res.assignment.variant for res in results}:
            m.child(m.stage_seconds, "total", v).observe(total_s)

    async def recommend(self, state: ServingState, reqs: list[RecRequest],
                        assignments: list[Assignment], loc_prefix: list[str | int],
                        trusted: bool = True) -> list[RecResult]:
        """Serve several users; groups them by variant so each group is one MGET, rows share batches.

        `trusted`: the caller authenticated (or auth is required and passed). An untrusted caller's
        `exclude_seen: false` does not apply to a stored history: comparing the two answers would list the
        user's stored items."""

        def loc(i: int) -> list[str | int]:
            return [*loc_prefix, *([i] if len(reqs) > 1 else [])]

        mapped = [self._check(state.variants[a.variant].bundle, r, loc(i))  # all checks before any work
                  for i, (r, a) in enumerate(zip(reqs, assignments, strict=True))]
        groups: dict[str, list[int]] = {}
        for i, a in enumerate(assignments):
            groups.setdefault(a.variant, []).append(i)
        results: list[RecResult | None] = [None] * len(reqs)

        async def serve_group(variant: str, idx: list[int]) -> None:
            rt = state.variants[variant]
            rt.batcher.admit()  # under overload: refuse before the store fetch, not after it
            t0 = time.perf_counter()
            fetched = await self.fetcher.fetch([reqs[i].user_id for i in idx],
                                               [reqs[i].history is None for i in idx], self._spec(rt))
            redis_s = time.perf_counter() - t0
            self.metrics.redis_degraded.set(1 if self.breaker.state == "open" else 0)
            rows = [self._row(rt.bundle, mapped[i], f) for i, f in zip(idx, fetched, strict=True)]
            outs = await _await_all([rt.batcher.submit(row) for row, _, _ in rows])
            for i, f, (row, seen, source), out in zip(idx, fetched, rows, outs, strict=True):
                ranked: Ranked = out.value
                status = f.status
                if ranked.reasoning_error:
                    status = "error"
                    self.metrics.errors.labels("reasoning_value").inc()
                exclude = seen if reqs[i].exclude_seen or (source == "store" and not trusted) else set()
                items = self._items(rt.bundle, ranked.ids, ranked.scores, exclude, reqs[i].k)
                results[i] = RecResult(reqs[i].user_id, items, assignments[i], rt.bundle.model_id,
                                       rt.bundle.model_version, status, source, len(row.history),
                                       redis_s, out.queue_wait_s, out.inference_s)

        await _await_all([serve_group(v, idx) for v, idx in groups.items()])
        return results  # type: ignore[return-value]

    @staticmethod
    def _check(bundle: ServingBundle, req: RecRequest, loc: list[str | int]) -> list[int] | None:
        """k within the beam and every request item known; the request history as item indices (None: the
        history comes from the store)."""
        if req.k > bundle.beam:
            raise RequestError([*loc, "k"], f"k={req.k} exceeds the model's beam size {bundle.beam}")
        if not req.exclude_seen and bundle.excludes_history:
            raise RequestError([*loc, "exclude_seen"], "false needs a bundle exported with --include-history: "
                               f"{bundle.model_id}'s graph never returns items of the history")
        if req.history is None:
            return None
        index = bundle.item_index
        out = [index.get(item, -1) for item in req.history]
        if -1 in out:
            j = out.index(-1)
            raise RequestError([*loc, "history", j], f"unknown item id {req.history[j]!r}")
        return out

    def _row(self, bundle: ServingBundle, mapped: list[int] | None, fetched: UserFetch) -> tuple[Row, set[int], str]:
        if mapped is not None:
            source, index = "request", mapped
        elif fetched.history is not None:
            source = "store"
            index = [bundle.item_index[x] for x in fetched.history if x in bundle.item_index]
            if len(index) < len(fetched.history):
                self.metrics.errors.labels("history_unknown_item").inc()
        else:
            source, index = "none", []
        return Row(index[-bundle.max_len:], fetched.reasoning), set(index), source

    @staticmethod
    def _items(bundle: ServingBundle, ids: list[int], scores: list[float], seen: set[int],
               k: int) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for ix, sc in zip(ids, scores, strict=True):
            if ix <= 0 or ix in seen or ix > len(bundle.items):
                continue
            out.append((bundle.items[ix - 1], sc))
            if len(out) == k:
                break
        return out
