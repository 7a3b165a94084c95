"""The HTTP API end to end: real app (lifespan), real Redis, real ONNX Runtime, httpx over ASGI."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_export.testing import build_bundle, item_ids
from scoter.reasoning_store import encode, history_key, reasoning_key
from tests.service.conftest import dead_redis_url, make_settings, serve

ITEMS = item_ids(50)


def _ids(resp_items) -> list[str]:
    return [x["item_id"] for x in resp_items]


def _expected(model, history: list[str], reasoning: np.ndarray | None, k: int, exclude: bool = True) -> list[str]:
    idx = [ITEMS.index(h) + 1 for h in history][-model.max_len:]
    row = np.zeros(model.max_len, np.int64)
    if idx:
        row[-len(idx):] = idx
    ids, _ = model.expected_topk(row, reasoning)
    seen = {ITEMS.index(h) + 1 for h in history} if exclude else set()
    return [ITEMS[i - 1] for i in ids if i not in seen][:k]


def _samples(text: str, name: str) -> list[tuple[dict, float]]:
    return [(s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name]


async def test_hit_miss_stale_rank_like_the_model(bundle_dir, tiny_model, store, uid, reasoning_version):
    rng = np.random.default_rng(3)
    mat = rng.normal(size=(3, 8)).astype(np.float32)
    hit, miss, stale = uid(), uid(), uid()
    store.set(reasoning_key(reasoning_version, hit), encode(mat, dtype="float32"))
    store.set(reasoning_key(reasoning_version, stale), encode(mat, dtype="float32", created_at=1))
    history = ["I00003", "I00010", "I00020"]
    async with serve(make_settings(bundle=bundle_dir)) as client:
        got = {}
        for user in (hit, miss, stale):
            r = await client.post("/v1/recommendations", json={"user_id": user, "history": history, "k": 5})
            assert r.status_code == 200, r.text
            got[user] = r.json()
    assert got[hit]["reasoning"] == "hit" and got[miss]["reasoning"] == "miss"
    assert got[stale]["reasoning"] == "stale"
    assert _ids(got[hit]["items"]) == _expected(tiny_model, history, mat, 5)
    assert _ids(got[miss]["items"]) == _expected(tiny_model, history, None, 5)
    assert _ids(got[stale]["items"]) == _ids(got[miss]["items"])  # stale is served without reasoning
    assert _ids(got[hit]["items"]) != _ids(got[miss]["items"])
    body = got[hit]
    assert body["variant"] == "default" and body["model_id"] == "tiny-scoter" and body["model_version"] == "1"
    assert body["history_source"] == "request" and body["history_length"] == 3
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)


async def test_history_from_store_truncation_and_exclude_seen(bundle_dir, tiny_model, store, uid,
                                                              reasoning_version):
    """A stored history is cut to the model's T for ranking and excluded whole; `exclude_seen: false` applies
    to it only for an authenticated caller (else comparing the two answers would list the stored items)."""
    user, nohist = uid(), uid()
    long_history = ITEMS[:12]  # T = 8: only the 8 most recent are used
    store.set(history_key(reasoning_version, user), json.dumps(long_history))
    key = {"Authorization": "Bearer k2"}
    async with serve(make_settings(bundle=bundle_dir, api_keys=["k1", "k2"])) as client:
        r = await client.post("/v1/recommendations", json={"user_id": user, "k": 10, "exclude_seen": False},
                              headers=key)
        r2 = await client.post("/v1/recommendations", json={"user_id": user, "k": 10}, headers=key)
        r3 = await client.post("/v1/recommendations", json={"user_id": nohist, "k": 3}, headers=key)
    async with serve(make_settings(bundle=bundle_dir)) as client:  # auth off: every caller is anonymous
        anon = await client.post("/v1/recommendations", json={"user_id": user, "k": 10, "exclude_seen": False})
    assert r.status_code == r2.status_code == r3.status_code == anon.status_code == 200
    a, b = r.json(), r2.json()
    assert a["history_source"] == "store" and a["history_length"] == 8
    assert _ids(a["items"]) == _expected(tiny_model, long_history, None, 10, exclude=False)
    assert not set(_ids(b["items"])) & set(long_history)  # seen items excluded (the whole history)
    assert _ids(b["items"]) == _expected(tiny_model, long_history, None, 10)
    assert r3.json()["history_source"] == "none" and len(r3.json()["items"]) == 3
    assert _ids(anon.json()["items"]) == _ids(b["items"])  # exclude_seen=false changed nothing for it


async def test_exclude_seen_false_is_refused_by_a_bundle_whose_graph_excludes_history(tmp_path, reasoning_version):
    """`scoter export` traces the history rule into the graph by default: such a bundle cannot honour
    `exclude_seen: false`, so it says so (422 naming the field) instead of silently ignoring it."""
    build_bundle(tmp_path / "b", reasoning_version=reasoning_version, exclude_history=True)
    async with serve(make_settings(bundle=tmp_path / "b")) as client:
        bad = await client.post("/v1/recommendations", json={"user_id": "u1", "history": ITEMS[:2], "k": 3,
                                                              "exclude_seen": False})
        ok = await client.post("/v1/recommendations", json={"user_id": "u1", "history": ITEMS[:2], "k": 3})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "exclude_seen"], bad.json()
    assert "--include-history" in bad.json()["detail"][0]["msg"]
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3


@pytest.mark.parametrize("body,loc", [
    ({"user_id": "bad id!", "k": 5}, ["body", "user_id"]),
    ({"user_id": "", "k": 5}, ["body", "user_id"]),
    ({"user_id": "u1", "k": "5"}, ["body", "k"]),  # strict: no string -> int coercion
    ({"user_id": "u1", "k": 0}, ["body", "k"]),
    ({"user_id": "u1", "k": 101}, ["body", "k"]),
    ({"user_id": "u1", "k": 11}, ["body", "k"]),  # above the bundle's beam (10)
    ({"user_id": "u1", "history": ["I00001", "NOPE"]}, ["body", "history", 1]),
    ({"user_id": "u1", "history": ["I00001", 7]}, ["body", "history", 1]),
    ({"user_id": "u1", "history": ["I00001"] * 21}, ["body", "history"]),  # max_history=20 below
    ({"user_id": "u1", "exclude_seen": "yes"}, ["body", "exclude_seen"]),
    ({"user_id": "u1", "surprise": 1}, ["body", "surprise"]),
    ({"k": 3}, ["body", "user_id"]),
])
async def test_bad_input_is_422_naming_the_field(bundle_dir, body, loc):
    async with serve(make_settings(bundle=bundle_dir, max_history=20, redis_url=dead_redis_url())) as client:
        r = await client.post("/v1/recommendations", json=body)
    assert r.status_code == 422, r.text
    assert any(d["loc"][: len(loc)] == loc for d in r.json()["detail"]), r.json()


async def test_batch_endpoint_and_its_limits(bundle_dir, tiny_model, store, uid, reasoning_version):
    users = [uid() for _ in range(4)]
    mat = np.ones((3, 8), np.float32)
    store.set(reasoning_key(reasoning_version, users[1]), encode(mat, dtype="float32"))
    reqs = [{"user_id": u, "history": ITEMS[i: i + 3], "k": 4} for i, u in enumerate(users)]
    async with serve(make_settings(bundle=bundle_dir, max_batch_request=4)) as client:
        r = await client.post("/v1/recommendations:batch", json={"requests": reqs})
        too_many = await client.post("/v1/recommendations:batch", json={"requests": reqs + reqs[:1]})
        bad_item = await client.post("/v1/recommendations:batch", json={"requests": [
            reqs[0], {"user_id": "x", "history": ["ZZZ"], "k": 2}]})
        empty = await client.post("/v1/recommendations:batch", json={"requests": []})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["user_id"] for x in results] == users
    assert [x["reasoning"] for x in results] == ["miss", "hit", "miss", "miss"]
    for i, res in enumerate(results):
        assert _ids(res["items"]) == _expected(tiny_model, ITEMS[i: i + 3], mat if i == 1 else None, 4)
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "requests"]
    assert bad_item.status_code == 422 and bad_item.json()["detail"][0]["loc"] == ["body", "requests", 1,
                                                                                    "history", 0]
    assert empty.status_code == 422


async def test_health_ready_models_and_metrics(bundle_dir, uid):
    async with serve(make_settings(bundle=bundle_dir)) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["redis"] == "ok"
        models = (await client.get("/v1/models", headers={"X-Scoter-Admin-Token": "s3cret"})).json()
        v = models["variants"][0]
        assert v["variant"] == "default" and v["provider"] in models["available_providers"]
        assert v["manifest"]["model_id"] == "tiny-scoter" and v["beam"] == 10
        for _ in range(3):
            assert (await client.post("/v1/recommendations", json={"user_id": uid(), "history": ["I00001"]})
                    ).status_code == 200
        text = (await client.get("/metrics")).text
        docs = await client.get("/openapi.json")
    assert "/v1/recommendations:batch" in docs.json()["paths"]
    stages = {(lab["stage"], lab["variant"]) for lab, _ in _samples(text, "scoter_stage_seconds_count")}
    assert {("queue", "default"), ("redis", "default"), ("inference", "default"), ("total", "default")} <= stages
    reasoning = {lab["status"]: val for lab, val in _samples(text, "scoter_reasoning_total")}
    assert reasoning["miss"] == 3
    assert sum(v for _, v in _samples(text, "scoter_batch_size_count")) >= 1
    info = _samples(text, "scoter_model_info")
    assert info and info[0][0]["model_id"] == "tiny-scoter" and info[0][0]["provider"].endswith("ExecutionProvider")
    assert _samples(text, "scoter_inflight_requests")[0][1] == 0
    http = [lab for lab, _ in _samples(text, "http_requests_total") if lab["handler"] == "/v1/recommendations"]
    assert http and http[0]["status"] == "2xx"
    buckets = {lab["le"] for lab, _ in _samples(text, "http_request_duration_seconds_bucket")}
    assert "0.001" in buckets  # millisecond-level buckets


async def test_redis_down_serves_degraded_within_deadline(bundle_dir, tiny_model):
    settings = make_settings(bundle=bundle_dir, redis_url=dead_redis_url(), redis_deadline_ms=50,
                             breaker_failure_threshold=2)
    async with serve(settings) as client:
        times, bodies = [], []
        for i in range(4):
            t0 = time.perf_counter()
            r = await client.post("/v1/recommendations", json={"user_id": f"d{i}", "history": ["I00005"], "k": 3})
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200
            bodies.append(r.json())
        ready = await client.get("/readyz")
        text = (await client.get("/metrics")).text
    assert all(b["reasoning"] == "error" for b in bodies)
    assert _ids(bodies[0]["items"]) == _expected(tiny_model, ["I00005"], None, 3)
    assert max(times) < 1.0
    assert ready.status_code == 200 and ready.json()["degraded"] and ready.json()["breaker"] == "open"
    assert _samples(text, "scoter_redis_degraded")[0][1] == 1
    assert {lab["status"]: v for lab, v in _samples(text, "scoter_reasoning_total")}["error"] == 4
    assert sum(v for lab, v in _samples(text, "scoter_errors_total") if lab["kind"].startswith("redis")) == 2


async def test_not_ready_without_redis_when_degraded_mode_is_off(bundle_dir):
    async with serve(make_settings(bundle=bundle_dir, redis_url=dead_redis_url(), allow_degraded=False)) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503 and not r.json()["ready"] and r.json()["bundles_warm"]


async def test_overload_answers_429_at_once(bundle_dir):
    settings = make_settings(bundle=bundle_dir, queue_capacity=1, max_batch=1, max_wait_ms=0,
                             redis_url=dead_redis_url(), breaker_failure_threshold=1)
    async with serve(settings) as client:
        await client.post("/v1/recommendations", json={"user_id": "warm", "history": ["I00001"]})
        rs = await asyncio.gather(*(client.post("/v1/recommendations", json={"user_id": f"o{i}", "history":
                                                                           ["I00001"]}) for i in range(60)))
        text = (await client.get("/metrics")).text
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
    assert all(r.headers.get("retry-after") == "1" for r in rs if r.status_code == 429)
    rejected = {lab["reason"]: v for lab, v in _samples(text, "scoter_rejections_total")}
    assert rejected["queue_full"] == codes.count(429)
