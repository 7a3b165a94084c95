"""Service configuration: one pydantic-settings object, read from `SCOTER_*` environment variables.

Every timeout is explicit because redis-py's defaults wait seconds on an outage, which would blow the
request deadline; every queue is bounded so overload becomes a fast 429 instead of growing latency.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """All knobs of the recommendation service (env prefix `SCOTER_`)."""

    model_config = SettingsConfigDict(env_prefix="SCOTER_", extra="ignore")

    # what to serve: one bundle, or an experiments file whose variants are bundles
    bundle: Path | None = None
    experiments: Path | None = None

    # reasoning store
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    redis_connect_timeout_s: float = Field(0.05, gt=0)
    redis_socket_timeout_s: float = Field(0.05, gt=0)
    redis_max_connections: int = Field(64, ge=1, description="fetch connections; a fetch that finds none free "
                                       "waits for one inside its deadline (counted as redis_pool_exhausted)")
    redis_held_connections: int = Field(4, ge=0, description="fetch connections kept checked out between "
                                        "fetches (the fast path); the rest go back to the pool when idle")
    readiness_timeout_s: float = Field(1.0, gt=0, description="/readyz Redis ping, on a connection of its own")
    redis_deadline_ms: float = Field(25.0, gt=0, description="per-request budget for the store fetch")
    reasoning_version: str | None = Field(None, description="overrides the bundle manifest's reasoning_version")
    reasoning_max_age_s: int = Field(30 * 24 * 3600, ge=1)
    breaker_failure_threshold: int = Field(10, ge=1, description="consecutive store failures that open it")
    breaker_reset_s: float = Field(2.0, gt=0, description="open -> half-open after this long")
    allow_degraded: bool = Field(True, description="ready without Redis (serving without reasoning)")

    # ranking
    providers: list[str] | None = Field(None, description="ONNX Runtime providers; default: CUDA if available")
    ort_intra_op_threads: int = Field(1, ge=0)
    ort_inter_op_threads: int = Field(1, ge=0)
    inference_workers: int = Field(2, ge=1, description="threads running ONNX sessions off the event loop, each "
                                   "with its own batch: about one per CPU given to the service (measured, BENCHMARKS.md)")
    warmup_runs: int = Field(2, ge=1)
    max_batch: int = Field(32, ge=1)
    max_wait_ms: float = Field(
        0.0, ge=0, description="extra wait for companions once the worker is free; 0 = greedy: dispatch at once "
        "and batch whatever queued while the previous batch ran")
    queue_capacity: int = Field(256, ge=1)
    queue_timeout_ms: float = Field(
        50.0, ge=0, description="queue deadline: a request that cannot start inference within this long is "
        "refused (429, Retry-After) at once; 0 = no deadline (only queue_capacity sheds)")
    loop_lag_shed_ms: float = Field(
        50.0, ge=0, description="while the event loop runs timers later than this, new recommendation requests "
        "are refused at once (429, rejections reason loop_lag): under overload the loop is the queue; 0 = off")

    # request limits
    max_history: int = Field(1000, ge=1, description="longer request histories are rejected (422)")
    max_batch_request: int = Field(64, ge=1, description="most users in one batch request")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="larger request bodies are refused (413) while "
                                "being read, before they are buffered whole")

    # HTTP server (uvicorn). Both default off: per request, uvicorn formats the access-log arguments even when
    # the log level drops the line, and rewrites the client address from X-Forwarded-For; the service uses
    # neither (Prometheus counts requests by route and status)
    access_log: bool = Field(False, description="uvicorn's per-request access log")
    proxy_headers: bool = Field(False, description="trust X-Forwarded-For/-Proto (uvicorn proxy_headers)")

    # HTTP: the recommendation routes answered by `service.fast_path` (same code and answers as the FastAPI
    # routes, ~0.25 ms less framework per request, BENCHMARKS.md); false: FastAPI serves them
    fast_path: bool = Field(True, description="serve POST /v1/recommendations[:batch] through the fast path")

    # observability: Prometheus always; FastAPI's own OpenTelemetry (traces, metrics, logs to the global
    # providers) only when asked, since even unconfigured it checks the providers on every request
    otel_telemetry: bool = Field(False, description="enable FastAPI's native OpenTelemetry instrumentation")

    # callers: with api_keys set, the recommendation routes need one of them (`Authorization: Bearer <key>` or
    # `X-API-Key: <key>`; several keys for rotation). Off by default (local use, or auth at a gateway)
    api_keys: list[SecretStr] = Field([], description="JSON list, e.g. '[\"k1\", \"k2\"]'")

    # experiments / admin
    admin_token: SecretStr | None = None
    reload_on_sighup: bool = True
    host: str = "127.0.0.1"
    port: int = 8000

    # shutdown: on SIGTERM/SIGINT uvicorn stops accepting, waits this long for in-flight requests, then the
    # lifespan stops each batcher, which first lets its queued jobs finish (up to drain_timeout_s)
    graceful_shutdown_s: float = Field(20.0, gt=0, description="uvicorn timeout_graceful_shutdown")
    drain_timeout_s: float = Field(5.0, ge=0, description="batcher drain on shutdown")

    @model_validator(mode="after")
    def _one_source(self) -> ServiceSettings:
        if (self.bundle is None) == (self.experiments is None):
            raise ValueError("set exactly one of bundle (SCOTER_BUNDLE) or experiments (SCOTER_EXPERIMENTS)")
        return self
