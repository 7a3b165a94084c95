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

import asyncio
import email.message
import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_json
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.batcher import ON_QUEUED

Handler = Callable[[Headers, bytes], Awaitable[Response]]  # request headers, body -> response

# nginx's "client closed request": what the metrics record for a request whose client went away before its
# answer (aborted upload, or disconnected while queued); nothing is sent, the connection is gone
CLIENT_CLOSED = 499
PARSE_ERROR = {"detail": "There was an error parsing the body"}  # FastAPI's answer for an unreadable body


def _printable(value: Any) -> Any:
    """`value` with every string made encodable (a lone surrogate such as "\\ud800" replaced)."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def validation_error_response(errors: list[dict[str, Any]]) -> Response:
    """FastAPI's 422 body (`{"detail": errors}`), serialised so that any input renders: an infinite or NaN
    number in the request (`1e999`) comes back as a string, and a string UTF-8 cannot encode (a lone surrogate
    from a `\\ud800` escape) has it replaced, instead of failing the JSON encoder with a 500.
    Also the app's handler for FastAPI's own RequestValidationError, so both paths answer alike."""
    try:
        body = to_json({"detail": errors}, inf_nan_mode="strings", fallback=str)
    except (PydanticSerializationError, UnicodeError):
        body = to_json({"detail": _printable(errors)}, inf_nan_mode="strings", fallback=str)
    return Response(body, status_code=422, media_type="application/json")


def json_response(status: int, content: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(content), status_code=status, media_type="application/json", headers=headers)


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
    (`model_validate_json`, same strict model): what that accepts, the two steps accept alike. A body `json`
    cannot read at all (invalid UTF-8, nesting past the recursion limit, an integer past Python's digit limit)
    is FastAPI's 400."""
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
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return json_response(400, PARSE_ERROR)
    else:
        data = body
    try:
        return model.model_validate(data, from_attributes=True)  # as FastAPI validates a body field
    except ValidationError as exc:
        return validation_error_response([{**e, "loc": ["body", *e["loc"]]} for e in exc.errors(include_url=False)])


class _DisconnectWatch:
    """Cancels the request's task when its client disconnects; started only once the request waits in an
    inference queue (`service.batcher.ON_QUEUED`), so a request served at once costs nothing for it."""

    __slots__ = ("receive", "task", "watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.task = asyncio.current_task()
        self.watcher: asyncio.Task | None = None
        self.gone = False

    def start(self) -> None:
        if self.watcher is None and self.task is not None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self.task.cancel()
                return

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()


class FastPathMiddleware:
    """Routes `POST` on the given exact paths to their handlers; passes everything else through."""

    def __init__(self, app: ASGIApp, handlers: dict[str, Handler],
                 on_client_gone: Callable[[], None] | None = None) -> None:
        self.app = app
        self.handlers = handlers
        self.on_client_gone = on_client_gone or (lambda: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)  # Starlette's body reading, as FastAPI's own route handler uses
        try:
            body = await request.body()
        except HTTPException as exc:  # the body limit (413): answered here, so the metrics see a 4xx
            response: Response = json_response(exc.status_code, {"detail": exc.detail})
            await response(scope, receive, send)
            return
        except ClientDisconnect:  # upload aborted: nobody to answer
            self.on_client_gone()
            await Response(status_code=CLIENT_CLOSED)(scope, receive, send)
            return
        watch = _DisconnectWatch(receive)
        token = ON_QUEUED.set(watch.start)
        try:
            response = await handler(request.headers, body)
        except asyncio.CancelledError:
            if not watch.gone or watch.task.uncancel() > 0:
                raise  # a real cancellation (shutdown), not ours
            self.on_client_gone()
            response = Response(status_code=CLIENT_CLOSED)  # dropped by the server: the client is gone
        finally:
            ON_QUEUED.reset(token)
            watch.stop()
        await response(scope, receive, send)
