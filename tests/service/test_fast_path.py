"""The fast path (`service.fast_path`) answers exactly as the FastAPI routes it stands in for.

Two real apps on the same bundle and the same Redis, one with `fast_path` on (the default) and one with it off,
get the same requests: valid ones (history in the request, from the store, batch) and every kind of bad one.
Status and body must match exactly.
"""

from __future__ import annotations

import json

import numpy as np

from model_export.testing import item_ids
from scoter.reasoning_store import encode, history_key, reasoning_key
from service.fast_path import FastPathMiddleware
from tests.service.conftest import make_settings, serve

ITEMS = item_ids(50)


def _cases(users: list[str]) -> list[tuple[str, dict]]:
    """(path, httpx request kwargs) pairs; `users[0]` has reasoning and a stored history."""
    one, batch = "/v1/recommendations", "/v1/recommendations:batch"
    return [
        (one, {"json": {"user_id": users[0], "history": ITEMS[:4], "k": 5}}),
        (one, {"json": {"user_id": users[0]}}),  # history from the store
        (one, {"json": {"user_id": users[1], "history": ITEMS[3:6], "k": 3, "exclude_seen": False}}),
        (batch, {"json": {"requests": [{"user_id": u, "history": ITEMS[i:i + 2], "k": 2}
                                       for i, u in enumerate(users)]}}),
        (one, {"json": {"user_id": "bad id!", "k": 5}}),
        (one, {"json": {"user_id": "u1", "k": "5"}}),
        (one, {"json": {"user_id": "u1", "k": 11}}),  # above the beam: checked by the service, not the schema
        (one, {"json": {"user_id": "u1", "history": ["I00001", "NOPE"]}}),
        (one, {"json": {"user_id": "u1", "history": ["I00001"] * 21}}),
        (one, {"json": {"user_id": "u1", "surprise": 1}}),
        (one, {"json": {"k": 3}}),
        (one, {"json": ["not", "an", "object"]}),
        (batch, {"json": {"requests": []}}),
        (batch, {"json": {"requests": [{"user_id": "u1"}] * 5}}),  # above max_batch_request
        (batch, {"json": {"requests": [{"user_id": "u1"}, {"user_id": "x", "history": ["ZZZ"]}]}}),
        (one, {"json": {"user_id": "u1"}, "headers": {"X-Scoter-Variant": "default"}}),  # no admin token: 403
        (one, {"json": {"user_id": users[1], "history": ITEMS[:2]},
               "headers": {"X-Scoter-Variant": "default", "X-Scoter-Admin-Token": "s3cret"}}),
        (one, {"json": {"user_id": "u1"}, "headers": {"X-Scoter-Variant": "nope", "X-Scoter-Admin-Token": "s3cret"}}),
        (one, {"content": b"{bad json", "headers": JSON}),
        (one, {"content": b"", "headers": JSON}),
        (one, {"content": b'{"user_id": "u1", "k": 1e999}', "headers": JSON}),  # inf: a 422, not a 500
        (one, {"content": b'{"user_id": "u1"}', "headers": {"content-type": "text/plain"}}),
        (one, {"content": b'{"user_id": "u1"}'}),  # no content type: FastAPI does not parse it as JSON
        (one, {"content": b'{"user_id": "u1"}', "headers": {"content-type": "application/vnd.api+json"}}),
    ]


JSON = {"content-type": "application/json"}


def _record_what_reaches_fastapi(app) -> list[str]:
    """Wrap the app behind the fast path (FastAPI's exception layer and router) to record the requests that
    reach it: the proof that the fast path, not FastAPI, answered the others."""
    node = app.middleware_stack  # built at start-up (lifespan)
    while not isinstance(node, FastPathMiddleware):
        node = node.app
    inner, reached = node.app, []

    async def recording(scope, receive, send):
        if scope["type"] == "http":
            reached.append(f"{scope['method']} {scope['path']}")
        await inner(scope, receive, send)

    node.app = recording
    return reached


def _without_request_ids(body):
    """The answer less its generated request ids (unique per request, on either path)."""
    if isinstance(body, dict):
        return {k: _without_request_ids(v) for k, v in body.items() if k != "request_id"}
    if isinstance(body, list):
        return [_without_request_ids(v) for v in body]
    return body


async def test_fast_path_answers_like_the_fastapi_routes(bundle_dir, store, uid, reasoning_version):
    users = [uid() for _ in range(3)]
    store.set(reasoning_key(reasoning_version, users[0]), encode(np.ones((3, 8), np.float32), dtype="float32"))
    store.set(history_key(reasoning_version, users[0]), json.dumps(ITEMS[5:9]))
    answers: dict[bool, list] = {}
    for fast in (True, False):
        settings = make_settings(bundle=bundle_dir, max_history=20, max_batch_request=4, fast_path=fast)
        async with serve(settings) as client:
            reached = _record_what_reaches_fastapi(client.app) if fast else None
            got = []
            for path, kw in _cases(users):
                r = await client.post(path, **kw)
                got.append((r.status_code, _without_request_ids(r.json())))
            got.append((await client.get("/v1/recommendations")).status_code)  # other methods: FastAPI (405)
        answers[fast] = got
        if fast:  # the fast path answered every POST itself; only the other method went on to FastAPI
            assert reached == ["GET /v1/recommendations"], reached
    statuses = [a if isinstance(a, int) else a[0] for a in answers[True]]
    assert statuses.count(200) == 6 and 403 in statuses and 405 in statuses  # the cases do what they say
    assert 500 not in statuses
    for i, (fast, slow) in enumerate(zip(answers[True], answers[False], strict=True)):
        assert fast == slow, f"case {i}: fast path {fast} != FastAPI {slow}"


async def test_oversized_bodies_are_refused_while_read(bundle_dir):
    """A body past SCOTER_MAX_BODY_BYTES gets 413 on both paths, announced (content-length) or streamed."""
    big = b'{"user_id": "u1", "history": [' + b",".join([b'"I00001"'] * 400) + b"]}"
    assert len(big) > 2048

    async def chunks():
        for i in range(0, len(big), 512):
            yield big[i:i + 512]

    for fast in (True, False):
        async with serve(make_settings(bundle=bundle_dir, max_body_bytes=2048, fast_path=fast)) as client:
            announced = await client.post("/v1/recommendations", content=big, headers=JSON)
            streamed = await client.post("/v1/recommendations", content=chunks(), headers=JSON)
            ok = await client.post("/v1/recommendations", json={"user_id": "u1", "history": ["I00001"]})
        assert announced.status_code == 413 and streamed.status_code == 413, (fast, announced.text)
        assert ok.status_code == 200
