"""Hostile input and faults, each against the real app and a redis-server the test starts on its own port:
non-finite reasoning values, a connection-pool burst, malformed bodies, hostile stored histories, timestamps
from the future, a tampered bundle at start-up, caller authentication and the public /v1/models."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_export.testing import item_ids
from scoter.ranker import open_bundle
from scoter.reasoning_store import FORMAT_VERSION, HEADER, MAGIC, encode, history_key, reasoning_key
from service.reasoning_fetch import CircuitBreaker, ReasoningFetcher, ReasoningSpec, make_client
from service.serving import Ranked, Row, _rank_batch
from tests.service.conftest import make_settings, serve

ROOT = Path(__file__).resolve().parents[2]
ITEMS = item_ids(50)
K, D = 3, 8


def _raw_value(matrix: np.ndarray, dtype: str, created_at: int | None = None) -> bytes:
    """A stored value written byte by byte, as a buggy or hostile writer could (`encode` refuses NaN/inf)."""
    code = {"float16": 1, "float32": 2}[dtype]
    k, d = matrix.shape
    created = int(time.time()) if created_at is None else created_at
    return HEADER.pack(MAGIC, FORMAT_VERSION, code, k, d, 0, created) + matrix.astype("<" + dtype[0] + str(
        np.dtype(dtype).itemsize)).tobytes()


def _samples(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name}


def _errors(text: str) -> dict[str, float]:
    return {dict(k)["kind"]: v for k, v in _samples(text, "scoter_errors_total").items()}


def _http_statuses(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in _samples(text, "http_requests_total").items():
        status = dict(labels)["status"]
        out[status] = out.get(status, 0) + v
    return out


def _expected(model, history: list[str], reasoning: np.ndarray | None, k: int) -> list[str]:
    idx = [ITEMS.index(h) + 1 for h in history][-model.max_len:]
    row = np.zeros(model.max_len, np.int64)
    if idx:
        row[-len(idx):] = idx
    ids, _ = model.expected_topk(row, reasoning)
    return [ITEMS[i - 1] for i in ids if i not in set(idx)][:k]


# ---- finding 1: one non-finite matrix is that user's error, never a batch's --------------------------------

async def test_non_finite_reasoning_is_that_users_error_and_never_fails_its_batch(
        bundle_dir, tiny_model, private_redis, reasoning_version):
    _, client, url = private_redis
    good = np.random.default_rng(1).normal(size=(K, D)).astype(np.float32)
    one_nan = good.copy()
    one_nan[1, 2] = np.nan
    bad = {"nan16": _raw_value(np.full((K, D), np.nan), "float16"),
           "inf16": _raw_value(np.full((K, D), np.inf), "float16"),
           "nan32": _raw_value(one_nan, "float32"),
           # finite, but so large that the scores overflow to inf: ranked again without it
           "huge32": _raw_value(np.full((K, D), 3e38), "float32")}
    for user, value in bad.items():
        client.set(reasoning_key(reasoning_version, user), value)
    healthy = [f"ok{i}" for i in range(40)]
    for user in healthy:
        client.set(reasoning_key(reasoning_version, user), encode(good, dtype="float32"))
    history = ["I00003", "I00011"]
    body = {"history": history, "k": 5}
    # a batching window so concurrent requests share inference batches with the bad rows
    async with serve(make_settings(bundle=bundle_dir, redis_url=url, max_wait_ms=5.0, max_batch=64)) as http:
        singles = {u: await http.post("/v1/recommendations", json={"user_id": u, **body}) for u in bad}
        batch = await http.post("/v1/recommendations:batch", json={"requests": [
            {"user_id": u, **body} for u in [*bad, *healthy[:4]]]})
        users = [*healthy, *bad] * 3
        concurrent = await asyncio.gather(*(http.post("/v1/recommendations", json={"user_id": u, **body})
                                            for u in users))
        text = (await http.get("/metrics")).text
    without = _expected(tiny_model, history, None, 5)
    with_good = _expected(tiny_model, history, good, 5)
    for user, r in singles.items():
        assert r.status_code == 200, (user, r.text)
        assert r.json()["reasoning"] == "error", user
        assert [x["item_id"] for x in r.json()["items"]] == without, user  # served without reasoning
    assert batch.status_code == 200, batch.text
    assert [x["reasoning"] for x in batch.json()["results"]] == ["error"] * len(bad) + ["hit"] * 4
    assert all([x["item_id"] for x in res["items"]] == with_good for res in batch.json()["results"][len(bad):])
    assert [r.status_code for r in concurrent] == [200] * len(users)
    for user, r in zip(users, concurrent, strict=True):
        assert r.json()["reasoning"] == ("error" if user in bad else "hit"), user
    assert _errors(text).get("reasoning_value") == len(bad) * 5  # singles + batch + 3 concurrent rounds
    assert sum(dict(k)["le"] != "+Inf" and v > 0 for k, v in _samples(text, "scoter_batch_size_bucket").items())


def test_a_failing_batch_is_rerun_row_by_row_so_only_the_guilty_row_errs(bundle_dir):
    """A row the graph refuses (an item index past the catalogue, which the request path never builds)
    fails alone; its companions in the same batch are ranked."""
    bundle = open_bundle(bundle_dir)
    rows = [Row([3, 7], None), Row([10_000], None), Row([5], None)]
    out = _rank_batch(bundle, rows)
    assert isinstance(out[0], Ranked) and isinstance(out[2], Ranked)
    assert isinstance(out[1], ValueError) and "item indices" in str(out[1])
    alone = _rank_batch(bundle, [rows[0]])[0]
    assert out[0] == alone


# ---- finding 2: a burst never leaves readiness wrong, and waits for connections ---------------------------

async def test_a_burst_past_the_pool_waits_for_connections_and_readiness_stays_true(
        bundle_dir, private_redis, reasoning_version):
    _, client, url = private_redis
    mat = np.ones((K, D), np.float32)
    users = [f"burst{i}" for i in range(200)]
    for u in users:
        client.set(reasoning_key(reasoning_version, u), encode(mat, dtype="float32"))
    settings = make_settings(bundle=bundle_dir, redis_url=url, redis_max_connections=8, redis_held_connections=2,
                             allow_degraded=False, queue_capacity=1024)
    async with serve(settings) as http:
        recommender = http.app.state.recommender
        for _ in range(2):
            rs = await asyncio.gather(*(http.post("/v1/recommendations", json={
                "user_id": u, "history": ["I00002"], "k": 3}) for u in users))
            assert [r.status_code for r in rs] == [200] * len(users)
            statuses = [r.json()["reasoning"] for r in rs]
            if statuses != ["hit"] * len(users):  # every one waited its turn
                text = (await http.get("/metrics")).text
                raise AssertionError(f"{statuses.count('hit')} hits of {len(users)}; errors {_errors(text)}")
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["redis"] == "ok" and ready.json()["degraded"] is False
            assert ready.json()["breaker"] == "closed"
        pool = recommender.fetcher.client.connection_pool
        assert len(recommender.fetcher._held._idle) <= 2  # the burst's connections went back to the pool
        assert len(pool._in_use_connections) <= 2
        text = (await http.get("/metrics")).text
    assert not any(k.startswith("redis") for k in _errors(text)), _errors(text)


async def test_pool_exhaustion_is_counted_as_such_and_never_opens_the_breaker(private_redis, reasoning_version):
    _, client, url = private_redis
    client.set(reasoning_key(reasoning_version, "u"), encode(np.ones((K, D), np.float32)))
    failures: list[str] = []
    breaker = CircuitBreaker(failure_threshold=1, reset_s=60)
    redis_client = make_client(url, cluster=False, connect_timeout=1, socket_timeout=1, max_connections=1)
    probe = make_client(url, cluster=False, connect_timeout=1, socket_timeout=1, max_connections=1)
    f = ReasoningFetcher(redis_client, max_age_s=3600, deadline_ms=50, breaker=breaker,
                         on_failure=failures.append, probe_client=probe)
    spec = ReasoningSpec(reasoning_version, K, D)
    try:
        taken = await redis_client.connection_pool.get_connection()  # someone holds the only connection
        for _ in range(3):
            out = await f.fetch(["u"], [False], spec)
            assert out[0].status == "error"
        assert failures == ["redis_pool_exhausted"] * 3 and breaker.state == "closed"
        assert await f.ping()  # readiness has a connection of its own
        waiter = asyncio.create_task(f.fetch(["u"], [False], spec))
        await asyncio.sleep(0.01)
        await redis_client.connection_pool.release(taken)  # handed back inside the waiter's deadline
        assert (await waiter)[0].status == "hit"
    finally:
        await f.close()


# ---- finding 3: malformed bodies are 4xx on both paths, and counted so ------------------------------------

HOSTILE_BODIES = {
    "invalid utf-8": (b'{"user_id": "\xff\xfe", "k": 3}', {400, 422}),
    "nesting 3000 deep": (b'{"user_id": ' + b"[" * 3000 + b"]" * 3000 + b"}", {400, 422}),
    "5000-digit integer": (b'{"user_id": "u1", "k": ' + b"9" * 5000 + b"}", {400, 422}),
    "lone surrogate in user_id": (b'{"user_id": "\\ud800", "k": 3}', {422}),
    "lone surrogate in history": (b'{"user_id": "u1", "history": ["I00001", "\\udfff"]}', {422}),
}


@pytest.mark.parametrize("fast", [True, False])
async def test_malformed_bodies_are_client_errors_with_a_reason_on_both_paths(bundle_dir, private_redis, fast):
    _, _, url = private_redis
    async with serve(make_settings(bundle=bundle_dir, redis_url=url, fast_path=fast, max_body_bytes=16384)) as http:
        for name, (raw, allowed) in HOSTILE_BODIES.items():
            for path in ("/v1/recommendations", "/v1/recommendations:batch"):
                body = raw if path == "/v1/recommendations" else b'{"requests": [' + raw + b"]}"
                r = await http.post(path, content=body, headers={"content-type": "application/json"})
                assert r.status_code in allowed, (name, path, r.status_code, r.text[:200])
                assert r.json()["detail"], (name, r.text[:200])  # a reason, as JSON
        big = b'{"user_id": "u1", "history": [' + b'"I00001",' * 3000 + b'"I00001"]}'
        announced = await http.post("/v1/recommendations", content=big, headers={"content-type": "application/json"})

        async def chunks():
            for i in range(0, len(big), 512):
                yield big[i:i + 512]

        streamed = await http.post("/v1/recommendations", content=chunks(),
                                   headers={"content-type": "application/json"})
        text = (await http.get("/metrics")).text
    assert announced.status_code == streamed.status_code == 413
    statuses = _http_statuses(text)
    assert not any(s.startswith("5") for s in statuses), statuses  # every one of them recorded as 4xx
    assert statuses.get("4xx", 0) >= 2 * len(HOSTILE_BODIES) + 2, statuses
    assert "unhandled" not in _errors(text) and "internal" not in _errors(text)


async def test_an_aborted_upload_is_recorded_as_the_client_going_away(bundle_dir, private_redis):
    """The client sends half a body and disconnects (the ASGI events a server produces for it)."""
    _, _, url = private_redis
    async with serve(make_settings(bundle=bundle_dir, redis_url=url)) as http:
        app = http.app
        events = [{"type": "http.request", "body": b'{"user_id": "u1", "hist', "more_body": True},
                  {"type": "http.disconnect"}]
        sent: list[dict] = []

        async def receive():
            return events.pop(0) if events else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/recommendations", "raw_path": b"/v1/recommendations",
                 "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("scoter.test", 80), "state": {}}
        await app(scope, receive, send)
        text = (await http.get("/metrics")).text
    assert sent[0]["status"] == 499
    statuses = _http_statuses(text)
    assert not any(s.startswith("5") for s in statuses), statuses
    assert _samples(text, "scoter_rejections_total")[(("reason", "client_gone"),)] == 1


# ---- findings 5 and 6: the store's values are not trusted -------------------------------------------------

async def test_hostile_stored_histories_are_bounded_and_counted(bundle_dir, tiny_model, private_redis,
                                                                reasoning_version):
    _, client, url = private_redis
    client.set(history_key(reasoning_version, "deep"), b"[" * 100_000 + b"]" * 100_000)
    long = ["I00001", "I00002", "I00003"] * 33_333 + ["I00004"]  # 100,000 items
    client.set(history_key(reasoning_version, "long"), json.dumps(long))
    client.set(history_key(reasoning_version, "huge"), json.dumps(["I00001"] * 200_000))  # past the byte bound
    client.set(history_key(reasoning_version, "types"), json.dumps(["I00001", 7, None]))
    async with serve(make_settings(bundle=bundle_dir, redis_url=url)) as http:
        rs = {u: await http.post("/v1/recommendations", json={"user_id": u, "k": 5})
              for u in ("deep", "long", "huge", "types")}
        text = (await http.get("/metrics")).text
    assert {u: r.status_code for u, r in rs.items()} == dict.fromkeys(rs, 200)
    for u in ("deep", "huge", "types"):  # malformed: served as if no history were stored
        assert rs[u].json()["history_source"] == "none" and len(rs[u].json()["items"]) == 5, u
    got = rs["long"].json()
    assert got["history_source"] == "store" and got["history_length"] == tiny_model.max_len
    assert [x["item_id"] for x in got["items"]] == _expected(tiny_model, long[-tiny_model.max_len:], None, 5)
    assert _errors(text).get("history_format") == 3


async def test_a_created_at_from_the_future_is_malformed(bundle_dir, private_redis, reasoning_version):
    _, client, url = private_redis
    mat = np.ones((K, D), np.float32)
    client.set(reasoning_key(reasoning_version, "y2100"), encode(mat, created_at=4102444800))
    client.set(reasoning_key(reasoning_version, "u64max"), _raw_value(mat, "float32", created_at=2**64 - 1))
    client.set(reasoning_key(reasoning_version, "skewed"), encode(mat, created_at=int(time.time()) + 60))
    async with serve(make_settings(bundle=bundle_dir, redis_url=url)) as http:
        got = {u: (await http.post("/v1/recommendations", json={"user_id": u, "history": ["I00002"]})).json()
               for u in ("y2100", "u64max", "skewed")}
        text = (await http.get("/metrics")).text
    assert {u: g["reasoning"] for u, g in got.items()} == {"y2100": "error", "u64max": "error", "skewed": "hit"}
    assert _errors(text).get("reasoning_format") == 2


# ---- finding 7: a bad bundle stops start-up with one clear line --------------------------------------------

def test_a_tampered_bundle_stops_serve_with_one_line_and_exit_2(bundle_dir, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(bundle_dir, bad)
    items = json.loads((bad / "items.json").read_text())
    (bad / "items.json").write_text(json.dumps(items[::-1]))
    proc = subprocess.run([sys.executable, "-c", "import sys; from service.cli import main_serve; "
                           "sys.exit(main_serve(sys.argv[1:]))", "--bundle", str(bad), "--port", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "checksum mismatch" in lines[0] and "items.json" in lines[0] and "default" in lines[0]


# ---- finding 8: caller authentication, the public /v1/models ----------------------------------------------

async def test_api_keys_guard_the_recommendation_routes(bundle_dir, private_redis):
    _, _, url = private_redis
    body = {"user_id": "u1", "history": ["I00002"], "k": 3}
    async with serve(make_settings(bundle=bundle_dir, redis_url=url, api_keys=["old-key", "new-key"])) as http:
        none = await http.post("/v1/recommendations", json=body)
        wrong = await http.post("/v1/recommendations", json=body, headers={"Authorization": "Bearer nope"})
        basic = await http.post("/v1/recommendations", json=body, headers={"Authorization": "Basic old-key"})
        bearer = await http.post("/v1/recommendations", json=body, headers={"Authorization": "Bearer old-key"})
        header = await http.post("/v1/recommendations", json=body, headers={"X-API-Key": "new-key"})
        batch_none = await http.post("/v1/recommendations:batch", json={"requests": [body]})
        batch_ok = await http.post("/v1/recommendations:batch", json={"requests": [body]},
                                   headers={"X-API-Key": "old-key"})
        health = await http.get("/healthz")
    assert none.status_code == wrong.status_code == basic.status_code == batch_none.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer" and "API key" in none.json()["detail"]
    assert bearer.status_code == header.status_code == batch_ok.status_code == 200
    assert health.status_code == 200  # probes stay open


async def test_models_shows_public_fields_only_without_the_admin_token(tmp_path, bundle_dir, private_redis):
    _, _, url = private_redis
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps({"experiments": [{"key": "ab", "seed": "secret-seed", "variants": [
        {"name": "control", "weight": 0.5, "bundle": str(bundle_dir)},
        {"name": "scoter", "weight": 0.5, "bundle": str(bundle_dir)}]}]}))
    async with serve(make_settings(experiments=cfg, redis_url=url)) as http:
        public = await http.get("/v1/models")
        admin = await http.get("/v1/models", headers={"X-Scoter-Admin-Token": "s3cret"})
    text = public.text
    assert public.status_code == 200 and "secret-seed" not in text and str(bundle_dir) not in text
    assert "manifest" not in text and "available_providers" not in text
    pub = public.json()
    assert {v["variant"]: v["weight"] for v in pub["variants"]} == {"control": 0.5, "scoter": 0.5}
    assert pub["experiments"]["experiments"][0]["key"] == "ab"
    full = admin.json()
    assert "secret-seed" in admin.text and full["variants"][0]["bundle"] == str(bundle_dir)
    assert full["variants"][0]["manifest"]["model_id"] == "tiny-scoter"


# ---- finding 4: overload sheds fast; a disconnected client's request is dropped ----------------------------

async def test_queue_deadline_refuses_what_cannot_start_in_time_and_refuses_new_work_at_once():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from service.batcher import MicroBatcher, QueueTimeoutError

    gate = threading.Event()
    ran: list[list[int]] = []

    def fn(xs: list[int]) -> list[int]:
        ran.append(list(xs))
        if xs[0] == 0:
            gate.wait(5)  # the only slot is busy
        return xs

    ex = ThreadPoolExecutor(1)
    b = MicroBatcher(fn, executor=ex, max_batch=8, max_wait_ms=0, capacity=64, workers=1, queue_timeout_ms=50)
    await b.start()
    try:
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.02)
        waiting = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.12)  # past the 50 ms deadline, still queued
        t0 = time.perf_counter()
        with pytest.raises(QueueTimeoutError):
            await b.submit(3)  # the queue is older than the deadline: refused without waiting
        with pytest.raises(QueueTimeoutError):
            b.admit()
        refused_in = time.perf_counter() - t0
        gate.set()
        assert (await first).value == 0
        for w in waiting:  # reached by the worker too late: refused, never run
            with pytest.raises(QueueTimeoutError):
                await w
        assert (await b.submit(4)).value == 4  # an empty queue admits again
    finally:
        gate.set()
        await b.stop()
        ex.shutdown(wait=False)
    assert refused_in < 0.02 and ran == [[0], [4]]


async def test_a_late_event_loop_refuses_new_requests_at_once(bundle_dir, private_redis):
    _, _, url = private_redis
    body = {"user_id": "u1", "history": ["I00002"], "k": 3}
    async with serve(make_settings(bundle=bundle_dir, redis_url=url, loop_lag_shed_ms=50)) as http:
        assert (await http.post("/v1/recommendations", json=body)).status_code == 200
        time.sleep(0.2)  # one long step: a single late sample, not a backlog
        for _ in range(3):  # a few loop turns: the monitor's overdue timer fires and it samples
            await asyncio.sleep(0)
        one_step = await http.post("/v1/recommendations", json=body)
        for _ in range(3):  # the loop stays late: every sample of the monitor's window is
            time.sleep(0.1)
            for _ in range(3):
                await asyncio.sleep(0)
        late = await http.post("/v1/recommendations", json=body)
        for _ in range(20):  # and recovers once the loop is on time again
            await asyncio.sleep(0.03)
            again = await http.post("/v1/recommendations", json=body)
            if again.status_code == 200:
                break
        text = (await http.get("/metrics")).text
    assert one_step.status_code == 200, one_step.text
    assert late.status_code == 429 and late.headers["retry-after"] == "1", late.text
    assert again.status_code == 200
    assert _samples(text, "scoter_rejections_total")[(("reason", "loop_lag"),)] == 1


def test_a_client_that_disconnects_while_queued_is_dropped_not_served(bundle_dir, private_redis):
    """Real uvicorn: the request waits in the batcher (a long batching window); the client closes its socket;
    the server cancels the request, counts it, and runs no batch for it."""
    import os
    import socket

    import httpx

    from scoter.testing import free_port
    from tests.service.test_cli import _wait_ready

    _, _, redis_url = private_redis
    port = free_port()
    env = {**os.environ, "SCOTER_WARMUP_RUNS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "SCOTER_MAX_WAIT_MS": "1500", "SCOTER_REDIS_URL": redis_url, "SCOTER_RELOAD_ON_SIGHUP": "false"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from service.cli import main_serve; "
                             "sys.exit(main_serve(sys.argv[1:]))", "--bundle", str(bundle_dir), "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        body = json.dumps({"user_id": "gone", "history": ["I00002"], "k": 2}).encode()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/recommendations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(0.3)  # queued, waiting for companions
        time.sleep(2.0)  # past the batching window: a batch would have run by now
        text = httpx.get(f"{url}/metrics", timeout=5).text
        served = httpx.post(f"{url}/v1/recommendations", json={"user_id": "stays", "history": ["I00002"], "k": 2},
                            timeout=10)
    finally:
        proc.terminate()
        proc.wait(20)
    assert _samples(text, "scoter_rejections_total").get((("reason", "client_gone"),)) == 1, text
    assert _samples(text, "scoter_batch_size_count")[()] == 0  # no inference for the gone client
    assert not [k for k in _http_statuses(text) if k.startswith("5")]
    assert served.status_code == 200
