"""ASGI fast path for the two recommendation routes: the same code as the FastAPI routes, less framework around it.

Why: at low load a recommendation is a few milliseconds of model time, and FastAPI's per-request machinery around
an endpoint (matching every route, the request and response wrappers, dependency solving) costs a measurable share
of it: -0.26 ms per request in a paired low-load run (BENCHMARKS.md, service overhead). This middleware sits
inside the HTTP metrics middleware and answers `POST /v1/recommendations[:batch]` itself: the body goes through
the same steps as in FastAPI's request handler (`parse_body`), then the shared `serve` runs. Everything else
(OpenAPI, models, health, admin, other methods) goes to FastAPI, and the FastAPI routes stay declared, so the
schema and `/docs` are unchanged; `SCOTER_FAST_PATH=false` lets them serve. The answers, 422s included, are the
same either way (tests/service/test_fast_path.py).
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Headers, bytes], Awaitable[Response]]  # request headers, body -> response


def validation_error_response(errors: list[dict[str, Any]]) -> Response:
    """FastAPI's 422 body (`{"detail": errors}`), serialised so that any input renders: an infinite or NaN
    number in the request (`1e999`) comes back as a string instead of failing the JSON encoder with a 500.
    Also the app's handler for FastAPI's own RequestValidationError, so both paths answer alike."""
    return Response(to_json({"detail": errors}, inf_nan_mode="strings", fallback=str), status_code=422,
                    media_type="application/json")


def _is_json(content_type: str | None) -> bool:
    """FastAPI's test (application/json or application/*+json, parameters allowed), with the common exact
    header answered before building an email Message to parse it."""
    if not content_type:
        return False
    if content_type == "application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_body(model: type[BaseModel], body: bytes, content_type: str | None) -> BaseModel | Response:
    """The validated body, or the 422 FastAPI answers for it: the same steps as FastAPI's request handler
    (no body: missing; not JSON by content type: the raw bytes, which fail as not an object; JSON: `json.loads`
    then validation), with error locations under "body". A JSON body is first tried in one pydantic-core call
    (`model_validate_json`, same strict model): what that accepts, the two steps accept alike."""
    if not body:
        return validation_error_response([{"type": "missing", "loc": ["body"], "msg": "Field required",
                                           "input": None}])
    if _is_json(content_type):
        try:  # the common valid body in one pydantic-core call; anything it rejects takes FastAPI's steps below
            return model.model_validate_json(body)
        except ValidationError:
            pass
        try:
            data: Any = json.loads(body)
        except json.JSONDecodeError as exc:
            return validation_error_response([{"type": "json_invalid", "loc": ["body", exc.pos],
                                               "msg": "JSON decode error", "input": {}, "ctx": {"error": exc.msg}}])
    else:
        data = body
    try:
        return model.model_validate(data, from_attributes=True)  # as FastAPI validates a body field
    except ValidationError as exc:
        return validation_error_response([{**e, "loc": ["body", *e["loc"]]} for e in exc.errors(include_url=False)])


class FastPathMiddleware:
    """Routes `POST` on the given exact paths to their handlers; passes everything else through."""

    def __init__(self, app: ASGIApp, handlers: dict[str, Handler]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)  # Starlette's body reading, as FastAPI's own route handler uses
        response = await handler(request.headers, await request.body())
        await response(scope, receive, send)
