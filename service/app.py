"""App factory: settings -> Recommender (bundles warm, store client) -> FastAPI app with metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics

from service.fast_path import FastPathMiddleware, validation_error_response
from service.metrics import MS_BUCKETS, ServiceMetrics
from service.routes import add_routes, fast_handlers
from service.serving import Recommender
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the app; bundles are loaded and warmed in the lifespan, before the server accepts traffic."""
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        recommender: Recommender = app.state.recommender
        await recommender.start()
        hup = settings.reload_on_sighup and recommender.install_sighup()
        log.info("ready (SIGHUP reload %s)", "on" if hup else "off")
        try:
            yield
        finally:
            if hup:
                recommender.remove_sighup()
            await recommender.stop()

    otel = settings.otel_telemetry
    app = FastAPI(title="scoter", version="0.1.0", lifespan=lifespan,
                  description="SCoTER recommendations: reasoning from the store, ranking with ONNX Runtime.",
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel}, max_body_size=settings.max_body_bytes)
    app.state.settings = settings
    app.state.recommender = Recommender(settings, metrics)
    add_routes(app.router)
    app.add_exception_handler(RequestValidationError, lambda request, exc: validation_error_response(
        list(exc.errors())))

    def unhandled(request: Request, exc: Exception) -> JSONResponse:
        """Any exception no route answered: counted as an error (the HTTP series already shows the 500)."""
        metrics.errors.labels("unhandled").inc()
        log.error("unhandled %s on %s %s: %r", type(exc).__name__, request.method, request.url.path, exc)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    app.add_exception_handler(Exception, unhandled)
    if settings.fast_path:  # inside the HTTP metrics middleware, which is added next
        app.add_middleware(FastPathMiddleware, handlers=fast_handlers(app),
                           on_client_gone=metrics.rejections.labels("client_gone").inc)
    # the two HTTP series the dashboards and alerts read (docs/CONTRACTS.md); the instrumentator's `default`
    # bundle adds size summaries and a second latency histogram, each more work on every request
    Instrumentator(registry=metrics.registry, excluded_handlers=["/metrics"]).add(
        http_metrics.requests(registry=metrics.registry),
        http_metrics.latency(buckets=MS_BUCKETS, registry=metrics.registry),
    ).instrument(app)
    return app
