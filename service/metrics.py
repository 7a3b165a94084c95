"""Prometheus metrics (names are a contract with deploy/ dashboards, see docs/CONTRACTS.md).

Each app gets its own CollectorRegistry (several apps can live in one test process). With
PROMETHEUS_MULTIPROC_DIR set, values go to per-process files and `/metrics` aggregates them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

# 0.25 ms .. 2.5 s: the interesting part of a recommendation request is single-digit milliseconds.
# 0.75 and 1.5 ms resolve the sub-millisecond Redis stage (target p99 <= 1 ms) without interpolating over 1-2 ms.
MS_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
              0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServiceMetrics:
    """All service metrics, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple, Any] = {}
        r = self.registry
        self.stage_seconds = Histogram("scoter_stage_seconds", "time per request stage", ["stage", "variant"],
                                       buckets=MS_BUCKETS, registry=r)
        self.reasoning = Counter("scoter_reasoning_total", "reasoning fetch outcome per request",
                                 ["status", "variant"], registry=r)
        self.rejections = Counter("scoter_rejections_total", "requests refused (queue full, not ready)",
                                  ["reason"], registry=r)
        self.errors = Counter("scoter_errors_total", "internal errors by kind", ["kind"], registry=r)
        self.batch_size = Histogram("scoter_batch_size", "requests per inference batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.inflight = Gauge("scoter_inflight_requests", "requests being served", registry=r,
                              multiprocess_mode="livesum")
        self.model_info = Gauge("scoter_model_info", "loaded bundle per variant (value 1)",
                                ["variant", "model_id", "model_version", "provider"], registry=r,
                                multiprocess_mode="liveall")
        self.exposures = Counter("scoter_exposures_total", "served responses per experiment and variant (one per "
                                 "request: SRM counts users from the exposure events instead)",
                                 ["experiment", "variant"], registry=r)
        self.exposure_events = Counter("scoter_exposure_events_total", "exposure events by sink (redis, jsonl; "
                                       "buffer: dropped because it was full) and outcome (written, dropped)",
                                       ["sink", "outcome"], registry=r)
        self.loop_lag = Gauge("scoter_event_loop_lag_seconds", "how late the event loop runs a timer (sampled "
                              "every 10 ms); above the queue deadline, new requests are refused", registry=r,
                              multiprocess_mode="livemax")
        self.redis_degraded = Gauge("scoter_redis_degraded", "1 while the reasoning store is unreachable "
                                    "(circuit open)", registry=r, multiprocess_mode="livemax")

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: the request path updates the same few children every time, and
        `labels()` (a lock, label checks, a dict) costs more than the update itself."""
        key = (metric, labels)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = metric.labels(*labels)
        return got

    def exposition(self) -> tuple[bytes, str]:
        """Body and content type for `/metrics` (aggregated over processes in multiprocess mode)."""
        if multiprocess_dir():
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
