"""HTTP routes: recommendations (single and batch), models, health, readiness, admin reload.

Checks that need the loaded model (unknown item, k above beam) raise RequestError, answered 422 with the field's
location like a schema error (`service.schemas`). `serve` is the recommendation path both the FastAPI routes
and the fast path (`service.fast_path`) run.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import onnxruntime as ort
from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic_core import to_json
from starlette.datastructures import Headers

from service.batcher import NotRunningError, QueueFullError, QueueTimeoutError
from service.fast_path import Handler, parse_body
from service.schemas import BatchRequest, BatchResponse, RecommendationRequest, RecommendationResponse
from service.serving import NotReadyError, Recommender, RecRequest, RecResult, RequestError

log = logging.getLogger(__name__)

def _unprocessable(loc: list, msg: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{"loc": loc, "msg": msg, "type": "value_error"}]})


def _response(r: RecResult, config_version: str, request_id: str) -> dict:
    """One RecommendationResponse as plain data: the route serialises it straight to JSON (see `_json`)."""
    a = r.assignment
    return {"user_id": r.user_id, "items": [{"item_id": i, "score": s} for i, s in r.items],
            "variant": a.variant, "experiment": a.experiment, "in_experiment": a.in_experiment, "forced": a.forced,
            "model_id": r.model_id, "model_version": r.model_version, "reasoning": r.reasoning,
            "history_source": r.history_source, "history_length": r.history_length,
            "config_version": config_version, "request_id": request_id,
            "assignments": [{"experiment": m.experiment, "variant": m.variant} for m in a.memberships]}


def _json(content: dict) -> Response:
    """JSON bytes from pydantic-core's Rust serialiser. The routes still declare their response models (OpenAPI,
    schemathesis checks the answers against them), but skip FastAPI building and re-validating the models."""
    return Response(content=to_json(content), media_type="application/json")


# The two A/B headers of the recommendation routes, documented in OpenAPI but read from `request.headers`: as
# FastAPI `Header()` parameters they cost ~45 us per request in-process (245 -> 200 us for the framework
# around an instant handler), a fifth of the framework's whole time.
VARIANT_HEADER, TOKEN_HEADER = "x-scoter-variant", "x-scoter-admin-token"
AB_HEADERS_OPENAPI = {"parameters": [
    {"name": "X-Scoter-Variant", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "QA override: serve this variant (needs X-Scoter-Admin-Token)"},
    {"name": "X-Scoter-Admin-Token", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "admin token for the variant override"},
    {"name": "Authorization", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "`Bearer <key>`: one of SCOTER_API_KEYS, when the deployment sets them"},
    {"name": "X-API-Key", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "the same key, for clients that cannot set Authorization"},
    {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "the request's id (1-128 of A-Z a-z 0-9 . _ : @ -), echoed back and in exposure events; "
                    "absent or not a plain token: one is generated"},
]}
UNAUTHORIZED = {"detail": "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"}
REC_RESPONSES: dict[int | str, dict] = {
    400: {"description": "unreadable body (not UTF-8, nested too deep, a number past the digit limit)"},
    401: {"description": "SCOTER_API_KEYS is set and the request carries none of them"},
    403: {"description": "X-Scoter-Variant without a valid admin token"},
    413: {"description": "body larger than SCOTER_MAX_BODY_BYTES"},
    422: {"description": "invalid input (the field is named)"},
    429: {"description": "overloaded: queue full, or the request could not start within the queue deadline "
                         "(Retry-After)"},
    503: {"description": "not ready"},
}


async def serve(r: Recommender, headers: Headers, reqs: list[RecommendationRequest], loc_prefix: list) -> list[dict] | Response:
    """The recommendation path shared by the FastAPI routes and the fast path (`service.fast_path`)."""
    variant_header, token = headers.get(VARIANT_HEADER), headers.get(TOKEN_HEADER)
    m = r.metrics
    t0 = time.perf_counter()
    settings = r.settings
    trusted = r.authenticate(headers)
    if trusted is False:  # counted by the HTTP series (401), not as an overload rejection
        return JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"}, content=UNAUTHORIZED)
    for i, q in enumerate(reqs):
        if q.history is not None and len(q.history) > settings.max_history:
            loc = [*loc_prefix, *([i] if loc_prefix[-1] == "requests" else []), "history"]
            return _unprocessable(loc, f"history has {len(q.history)} items, at most {settings.max_history}")
    if variant_header is not None and not r.check_admin(token):
        return JSONResponse(status_code=403, content={
            "detail": "X-Scoter-Variant requires a valid X-Scoter-Admin-Token"})
    with m.inflight.track_inprogress():
        try:
            r.admit()
            for attempt in (1, 2):  # a reload may stop the batcher this request picked; retry on the new state
                state = r.require_state()
                assignments = [r.assign(state, q.user_id, variant_header) for q in reqs]
                try:
                    results = await r.recommend(
                        state, [RecRequest(q.user_id, q.history, q.k, q.exclude_seen) for q in reqs],
                        assignments, loc_prefix, trusted=bool(trusted))
                    break
                except NotRunningError:
                    if attempt == 2 or r.state is state:
                        raise
        except RequestError as exc:
            return _unprocessable(exc.loc, exc.msg)
        except QueueTimeoutError as exc:
            m.rejections.labels(exc.reason).inc()
            return JSONResponse(status_code=429, headers={"Retry-After": "1"},
                                content={"detail": "overloaded: the request could not start in time, retry later"})
        except QueueFullError:
            m.rejections.labels("queue_full").inc()
            return JSONResponse(status_code=429, headers={"Retry-After": "1"},
                                content={"detail": "overloaded: inference queue is full, retry later"})
        except (NotReadyError, NotRunningError):
            m.rejections.labels("not_ready").inc()
            return JSONResponse(status_code=503, content={"detail": "not ready"})
        except Exception:
            m.errors.labels("internal").inc()
            log.exception("recommendation failed")
            return JSONResponse(status_code=500, content={"detail": "internal error"})
    ids = r.finish(results, time.perf_counter() - t0, headers, state.loaded.version)
    return [_response(res, state.loaded.version, rid) for res, rid in zip(results, ids, strict=True)]


async def recommend_one(r: Recommender, headers: Headers, body: RecommendationRequest) -> Response:
    out = await serve(r, headers, [body], ["body"])
    if isinstance(out, Response):
        return out
    resp = _json(out[0])
    resp.headers["X-Request-ID"] = out[0]["request_id"]
    return resp


async def recommend_many(r: Recommender, headers: Headers, body: BatchRequest) -> Response:
    limit = r.settings.max_batch_request
    if len(body.requests) > limit:
        return _unprocessable(["body", "requests"], f"{len(body.requests)} requests, at most {limit}")
    out = await serve(r, headers, body.requests, ["body", "requests"])
    if isinstance(out, Response):
        return out
    resp = _json({"results": out})
    resp.headers["X-Request-ID"] = out[0]["request_id"].rsplit(".", 1)[0]
    return resp


def fast_handlers(app: FastAPI) -> dict[str, Handler]:
    """The fast path's handlers (`service.fast_path`): the routes' own code behind a bytes -> model parse."""

    async def one(headers: Headers, body: bytes) -> Response:
        q = parse_body(RecommendationRequest, body, headers.get("content-type"))
        return q if isinstance(q, Response) else await recommend_one(app.state.recommender, headers, q)

    async def many(headers: Headers, body: bytes) -> Response:
        q = parse_body(BatchRequest, body, headers.get("content-type"))
        return q if isinstance(q, Response) else await recommend_many(app.state.recommender, headers, q)

    return {"/v1/recommendations": one, "/v1/recommendations:batch": many}


def add_routes(router: APIRouter) -> None:
    """Register the routes on `router`: the app's own router, so a request is matched once, not through an
    included router's second dispatch layer."""

    def rec(request: Request) -> Recommender:
        return request.app.state.recommender

    @router.post("/v1/recommendations", response_model=RecommendationResponse, tags=["recommendations"],
                 responses=REC_RESPONSES, openapi_extra=AB_HEADERS_OPENAPI)
    async def recommend(request: Request, body: RecommendationRequest):
        return await recommend_one(rec(request), request.headers, body)

    @router.post("/v1/recommendations:batch", response_model=BatchResponse, tags=["recommendations"],
                 responses=REC_RESPONSES, openapi_extra=AB_HEADERS_OPENAPI)
    async def recommend_batch(request: Request, body: BatchRequest):
        return await recommend_many(rec(request), request.headers, body)

    @router.get("/v1/models", tags=["models"])
    async def models(request: Request):
        """Public fields for anyone; bundle paths, manifests, seeds and providers only with the admin token."""
        r = rec(request)
        state = r.state
        if state is None:
            return JSONResponse(status_code=503, content={"detail": "not ready"})
        admin = r.check_admin(request.headers.get(TOKEN_HEADER))
        exp = state.loaded.config.active
        weights = {v.name: v.weight for v in exp.variants}
        variants = []
        for name, rt in state.variants.items():
            v = {"variant": name, "weight": weights.get(name), "model_id": rt.bundle.model_id,
                 "model_version": rt.bundle.model_version, "max_history": rt.bundle.max_len, "beam": rt.bundle.beam}
            if admin:
                v.update(bundle=str(rt.bundle.path), provider=rt.bundle.provider,
                         manifest=rt.bundle.manifest.model_dump(mode="json"))
            variants.append(v)
        config = state.loaded.config.model_dump(mode="json")
        if not admin:  # keys, status, coverage and weights only: no seeds (they predict assignment), no paths
            config = {"experiments": [
                {"key": e.get("key"), "status": e.get("status"), "coverage": e.get("coverage"),
                 "variants": [{"name": v.get("name"), "weight": v.get("weight")} for v in e.get("variants", [])]}
                for e in config.get("experiments", [])]}
        body = {"config_version": state.loaded.version, "experiments": config, "active_experiment": exp.key,
                "variants": variants}
        if admin:
            body["available_providers"] = ort.get_available_providers()
        return body

    @router.get("/healthz", tags=["ops"])
    async def healthz():
        return {"status": "ok"}

    @router.get("/readyz", tags=["ops"])
    async def readyz(request: Request):
        r = rec(request)
        redis_ok = await r.fetcher.ping()
        warm = r.state is not None and r.warm
        ready = warm and (redis_ok or r.settings.allow_degraded)
        body = {"ready": ready, "bundles_warm": warm, "redis": "ok" if redis_ok else "unreachable",
                "degraded": not redis_ok, "breaker": r.breaker.state,
                "config_version": r.state.loaded.version if r.state else None}
        return JSONResponse(status_code=200 if ready else 503, content=body)

    @router.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics(request: Request):
        body, ctype = rec(request).metrics.exposition()
        return Response(content=body, media_type=ctype)

    @router.post("/admin/reload", tags=["ops"])
    async def admin_reload(request: Request, x_scoter_admin_token: Annotated[str | None, Header()] = None):
        r = rec(request)
        if not r.check_admin(x_scoter_admin_token):
            return JSONResponse(status_code=403, content={"detail": "a valid X-Scoter-Admin-Token is required"})
        try:
            state = await r.reload()
        except (ValueError, OSError) as exc:  # bad or unreadable config, missing bundle: keep serving the old
            log.warning("reload refused, keeping config %s: %s", r.state.loaded.version if r.state else None, exc)
            return JSONResponse(status_code=400, content={"detail": f"reload refused: {exc}"})
        return {"config_version": state.loaded.version, "variants": list(state.variants)}
