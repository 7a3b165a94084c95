"""Exposure events through the real service and a private redis-server: one event per served response and
experiment, request ids (honoured and generated), the JSONL copy, holdout and forced requests, drops counted
when Redis is down or the buffer is full, and SRM over unique users instead of requests (issue 15, finding 9)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from scoter.cli import main
from service.experiments import load_config
from service.exposures import decode_entry
from tests.service.conftest import dead_redis_url, make_settings, serve

STREAM = "scoter:exposures"


def _config(path: Path, bundle: Path, holdout: float | None = None, weights=(0.5, 0.5)) -> Path:
    body: dict = {"experiments": [
        {"key": "ranker", "seed": "r", "variants": [{"name": "control", "weight": weights[0], "bundle": str(bundle)},
                                                     {"name": "scoter", "weight": weights[1], "bundle": str(bundle)}]},
        {"key": "layout", "seed": "l", "namespace": {"id": "ui", "range": [0, 0.5]},
         "variants": [{"name": "grid", "weight": 0.5}, {"name": "list", "weight": 0.5}]}]}
    if holdout:
        body["holdout"] = {"key": "hold", "seed": "h", "share": holdout}
    path.write_text(json.dumps(body))
    return path


def _events(url: str) -> list[dict]:
    client = redis.Redis.from_url(url)
    try:
        return [decode_entry(f) for _, f in client.xrange(STREAM)]
    finally:
        client.close()


def _metric(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name}


@pytest.fixture
def redis_url(private_redis) -> str:
    """The url of conftest's private redis-server (its own port, never the shared one)."""
    return private_redis[2]


async def _drain(client) -> None:
    await client.app.state.recommender.exposures.flush()


async def test_every_served_response_logs_its_experiments(tmp_path, bundle_dir, redis_url, monkeypatch):
    jsonl = tmp_path / "events" / "exposures.jsonl"
    monkeypatch.setenv("SCOTER_EXPOSURES_JSONL", str(jsonl))
    cfg = _config(tmp_path / "exp.json", bundle_dir, holdout=0.2)
    assigner = load_config(cfg).assigner
    users = [f"ev-{i}" for i in range(120)]
    async with serve(make_settings(experiments=cfg, redis_url=redis_url)) as client:
        single = [await client.post("/v1/recommendations", json={"user_id": u, "history": ["I00002"], "k": 3})
                  for u in users[:60]]
        batch = await client.post("/v1/recommendations:batch", headers={"X-Request-ID": "batch-7"}, json={
            "requests": [{"user_id": u, "history": ["I00002", "I00004"], "k": 2} for u in users[60:]]})
        mine = await client.post("/v1/recommendations", headers={"X-Request-ID": "client.id-42"},
                                 json={"user_id": users[0], "history": ["I00002"], "k": 3})
        bad_id = await client.post("/v1/recommendations", headers={"X-Request-ID": "not ok; x" * 3},
                                   json={"user_id": users[1], "history": ["I00002"], "k": 3})
        forced = await client.post("/v1/recommendations", json={"user_id": "qa", "history": ["I00002"], "k": 3},
                                   headers={"X-Scoter-Variant": "scoter", "X-Scoter-Admin-Token": "s3cret"})
        await _drain(client)
        text = (await client.get("/metrics")).text
    responses = [r.json() for r in single] + batch.json()["results"] + [mine.json(), bad_id.json()]
    assert all(r.status_code == 200 for r in [*single, batch, mine, bad_id, forced])
    # request ids: generated, echoed in the header, `<id>.<index>` in a batch, a caller's plain id honoured
    assert single[0].headers["x-request-id"] == single[0].json()["request_id"] and len(single[0].json()["request_id"]) == 32
    assert len({r["request_id"] for r in responses}) == len(responses)
    assert batch.headers["x-request-id"] == "batch-7"
    assert [r["request_id"] for r in batch.json()["results"]] == [f"batch-7.{i}" for i in range(60)]
    assert mine.json()["request_id"] == "client.id-42" and mine.headers["x-request-id"] == "client.id-42"
    assert bad_id.json()["request_id"] != "not ok; x" * 3
    events = _events(redis_url)
    expected = [(r["request_id"], m.experiment, m.variant) for r, u in zip(responses, [*users, users[0], users[1]],
                                                                         strict=True)
                for m in assigner.assign(u).memberships]
    assert sorted((e["request_id"], e["experiment"], e["variant"]) for e in events) == sorted(expected)
    assert {r["user_id"]: r["assignments"] for r in responses} == {
        u: [{"experiment": m.experiment, "variant": m.variant} for m in assigner.assign(u).memberships] for u in users}
    held = [u for u in users if assigner.assign(u).holdout]
    assert held and all(e["variant"] == "holdout" for e in events if e["user_id"] in held)
    by_rid = {r["request_id"]: r for r in responses}
    for e in events:  # each event says what the response served
        r = by_rid[e["request_id"]]
        assert e["user_id"] == r["user_id"] and e["model_id"] == r["model_id"]
        assert e["model_version"] == r["model_version"] and e["reasoning"] == r["reasoning"]
        assert e["items"] == [i["item_id"] for i in r["items"]] and e["history_length"] == r["history_length"]
        assert e["config_version"] == r["config_version"] and e["ts"] > 1.7e9
    assert "qa" not in {e["user_id"] for e in events}  # forced requests are not exposures
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert sorted(lines, key=lambda e: (e["request_id"], e["experiment"])) == sorted(
        events, key=lambda e: (e["request_id"], e["experiment"]))
    counts = _metric(text, "scoter_exposure_events_total")
    assert counts[(("outcome", "written"), ("sink", "redis"))] == len(events)
    assert counts[(("outcome", "written"), ("sink", "jsonl"))] == len(events)
    per_variant = _metric(text, "scoter_exposures_total")
    assert sum(per_variant.values()) == len(events)
    assert per_variant[(("experiment", "hold"), ("variant", "holdout"))] == sum(
        e["variant"] == "holdout" for e in events)


async def test_redis_down_requests_still_answered_and_drops_counted(tmp_path, bundle_dir, monkeypatch):
    monkeypatch.setenv("SCOTER_EXPOSURES_REDIS_URL", dead_redis_url())
    monkeypatch.setenv("SCOTER_EXPOSURES_WRITE_TIMEOUT_S", "0.05")
    cfg = _config(tmp_path / "exp.json", bundle_dir)
    async with serve(make_settings(experiments=cfg, redis_url=dead_redis_url(), redis_deadline_ms=50,
                                   redis_connect_timeout_s=0.05, redis_socket_timeout_s=0.05)) as client:
        rs = [await client.post("/v1/recommendations", json={"user_id": f"down-{i}", "history": ["I00002"]})
              for i in range(30)]
        await _drain(client)
        text = (await client.get("/metrics")).text
    assert all(r.status_code == 200 for r in rs)
    counts = _metric(text, "scoter_exposure_events_total")
    exposed = sum(_metric(text, "scoter_exposures_total").values())
    assert exposed >= 30 and counts[(("outcome", "dropped"), ("sink", "redis"))] == exposed
    assert (("outcome", "written"), ("sink", "redis")) not in counts


async def test_a_full_buffer_drops_and_counts_instead_of_waiting(tmp_path, bundle_dir, redis_url, monkeypatch):
    monkeypatch.setenv("SCOTER_EXPOSURES_BUFFER", "5")
    monkeypatch.setenv("SCOTER_EXPOSURES_FLUSH_INTERVAL_S", "60")  # the writer sleeps: the buffer fills
    cfg = _config(tmp_path / "exp.json", bundle_dir)
    async with serve(make_settings(experiments=cfg, redis_url=redis_url)) as client:
        await client.post("/v1/recommendations", json={"user_id": "warm", "history": ["I00002"]})
        await _drain(client)  # the writer's first pass is done; from here it sleeps
        batch = await client.post("/v1/recommendations:batch", json={
            "requests": [{"user_id": f"full-{i}", "history": ["I00002"]} for i in range(40)]})
        text = (await client.get("/metrics")).text
        await _drain(client)
    assert batch.status_code == 200
    dropped = _metric(text, "scoter_exposure_events_total")[(("outcome", "dropped"), ("sink", "buffer"))]
    users = [f"full-{i}" for i in range(40)]
    memberships = sum(len(load_config(cfg).assigner.assign(u).memberships) for u in users[5:])
    assert dropped == memberships
    assert {e["user_id"] for e in _events(redis_url)} == {"warm", *users[:5]}


async def test_srm_counts_users_not_requests(tmp_path, bundle_dir, redis_url, monkeypatch, capsys):
    """The same 2,000 users twice and one treatment user with 1,500 requests: a correct split. Over requests
    the chi-squared test cries SRM; over unique users from the exposure events it does not."""
    jsonl = tmp_path / "exposures.jsonl"
    monkeypatch.setenv("SCOTER_EXPOSURES_JSONL", str(jsonl))
    cfg = _config(tmp_path / "exp.json", bundle_dir)
    assigner = load_config(cfg).assigner
    users = [f"srm-{i}" for i in range(2000)]
    heavy = next(u for u in users if assigner.assign(u).variant == "scoter")
    async with serve(make_settings(experiments=cfg, redis_url=redis_url, max_batch_request=64)) as client:
        for _ in range(2):
            for i in range(0, len(users), 64):
                r = await client.post("/v1/recommendations:batch", json={
                    "requests": [{"user_id": u, "history": ["I00002"], "k": 1} for u in users[i:i + 64]]})
                assert r.status_code == 200
        for _ in range(1500 // 25):
            r = await client.post("/v1/recommendations:batch", json={
                "requests": [{"user_id": heavy, "history": ["I00002"], "k": 1}] * 25})
            assert r.status_code == 200
        await _drain(client)
        text = (await client.get("/metrics")).text
    requests = {dict(k)["variant"]: int(v) for k, v in _metric(text, "scoter_exposures_total").items()
                if dict(k)["experiment"] == "ranker"}
    (tmp_path / "req.json").write_text(json.dumps(requests))
    by_requests = main(["ab", "srm", "--counts", str(tmp_path / "req.json"), "--experiments", str(cfg)])
    capsys.readouterr()
    by_users = main(["ab", "srm", "--exposures", str(jsonl), "--experiments", str(cfg), "--experiment", "ranker"])
    out = json.loads(capsys.readouterr().out)
    assert by_requests == 1  # the old unit: "SRM detected"
    assert by_users == 0 and out["counts"] == dict(Counter(assigner.assign(u).variant for u in users))
    stream = main(["ab", "srm", "--exposures", f"{redis_url}?stream={STREAM}", "--experiments", str(cfg),
                   "--experiment", "ranker"])
    assert stream == 0 and json.loads(capsys.readouterr().out)["counts"] == out["counts"]
