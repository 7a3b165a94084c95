"""Sharded H encoding and publishing: every shard together equals one unsharded run, byte for byte in the H
folder and in the store, on a private real Redis and on a real one-node Redis Cluster; shards are resumable and
idempotent; bad shard flags get a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis

from offline.data.datasets import Dataset
from offline.reasoning import pipeline
from offline.reasoning.config import EncoderStudentConfig
from offline.reasoning.encode import (
    SHARD_FILE,
    Shard,
    encode_shard,
    merge_shards,
    read_shard,
    student_h_of_rows,
)
from scoter import h_folder
from scoter.cli import main as scoter_main
from scoter.testing import redis_server
from tests.offline.reasoning.test_pipeline import _teacher
from tests.service.test_cluster import cluster_port  # noqa: F401  (fixture: a real one-node cluster)

CREATED = "1700000000"
FILES = ["H_train.npy", "H_valid.npy", "H_test.npy", "present_train.npy", "present_valid.npy",
         "present_test.npy", "user_ids.json"]


def _h_folder(folder: Path, n: int = 23, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "valid", "test"):
        present = rng.random(n) > 0.2
        h_folder.write_split(folder, split, rng.normal(size=(n, 2, 4)).astype(np.float32), present)
    h_folder.write_user_ids(folder, [f"user-{i}" for i in range(n)])
    return folder


def _publish(h: Path, url: str, *extra: str) -> dict:
    args = ["reason", "publish", "--h", str(h), "--reasoning-version", "rv-shards", "--redis-url", url,
            "--batch-size", "4", "--shard-block", "8", "--no-histories", "--created-at", CREATED, *extra]
    assert scoter_main(args) == 0
    return redis.Redis.from_url(url)


def _store(client, skip_meta: bool = False) -> dict[bytes, bytes]:
    keys = [k for k in client.scan_iter(match="scoter:*", count=1000)
            if not (skip_meta and k.startswith(b"scoter:meta:"))]
    return {k: client.get(k) for k in keys}


@pytest.fixture
def two_redis(tmp_path):
    with redis_server(tmp_path) as (_, one), redis_server(tmp_path) as (_, two):
        yield one, two


def test_shard_partition_is_deterministic_and_complete() -> None:
    shards = [Shard(index=i, count=3, block=4) for i in range(3)]
    rows = [s.rows(30) for s in shards]
    assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(30))
    assert rows[0].tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 24, 25, 26, 27]
    assert Shard.parse("1/3") == Shard(index=1, count=3)
    with pytest.raises(ValueError, match="not below count"):
        Shard.parse("3/3")
    with pytest.raises(ValueError, match="INDEX/COUNT"):
        Shard.parse("a/b")


def test_shard_index_from_indexed_job(monkeypatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert Shard.parse("4") == Shard(index=2, count=4)
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX"):
        Shard.parse("4")


def test_two_shards_publish_the_same_store_as_one(tmp_path, two_redis) -> None:
    folder = _h_folder(tmp_path / "h")
    whole, sharded = two_redis
    one = _publish(folder, whole)
    for i in range(2):
        _publish(folder, sharded, "--shard", f"{i}/2")
    two = redis.Redis.from_url(sharded)
    expected = _store(one)
    assert len([k for k in expected if k.startswith(b"scoter:h:rv-shards:user-")]) > 10
    assert _store(two) == expected  # every key, value and progress marker, byte for byte

    # idempotent and resumable: a rerun writes nothing; a lost batch is rewritten with the same bytes
    marker = b"scoter:h:rv-shards:__progress__:test:4:2"
    value = b"scoter:h:rv-shards:user-8"
    assert marker in expected and value in expected
    two.delete(marker, value)  # rows 8..11 are in block 1 (rows 8..15): shard 1's
    _publish(folder, sharded, "--shard", "0/2")
    assert marker not in _store(two)
    _publish(folder, sharded, "--shard", "1/2")
    assert _store(two) == expected


def _many_users(tiny: Dataset, n: int) -> Dataset:
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, tiny.n_items + 1, int(rng.integers(4, 8))).astype(np.int64) for _ in range(n)]
    return Dataset(name="many", user_ids=[f"m{i}" for i in range(n)], sequences=seqs, items=tiny.items,
                   n_items=tiny.n_items, checksum="many")


def test_encoded_shards_equal_one_encode_in_files_and_store(tiny_dataset, tmp_path, two_redis) -> None:
    """A real encoder student (MiniLM item vectors + trained head) encodes 8200 users whole, and as 2 shards of
    4096-row blocks (the student's inference chunk: each row group is the one the whole run feeds it)."""
    cfg = EncoderStudentConfig(epochs=2)
    student, _ = pipeline.train_encoder_student(tiny_dataset, _teacher(tiny_dataset), cfg, tmp_path)
    ds = _many_users(tiny_dataset, 8200)
    whole = tmp_path / "whole"
    pipeline.precompute_h(student, ds, whole, cfg)
    shards = tmp_path / "shards"
    block = 4096
    for i in range(2):
        shard = Shard(index=i, count=2, block=block)
        folder = encode_shard(student_h_of_rows(student, ds, cfg), ds.user_ids, shards, shard)
        assert read_shard(folder)[1].tolist() == shard.rows(len(ds.user_ids)).tolist()
    merge_shards(shards, 2, tmp_path / "merged")
    for name in FILES:
        assert (tmp_path / "merged" / name).read_bytes() == (whole / name).read_bytes(), name

    # a complete shard is skipped, not recomputed
    done = shards / Shard(index=0, count=2, block=block).name
    mtime = (done / "H_test.npy").stat().st_mtime_ns
    encode_shard(lambda *_: pytest.fail("recomputed a complete shard"), ds.user_ids, shards,
                 Shard(index=0, count=2, block=block))
    assert (done / "H_test.npy").stat().st_mtime_ns == mtime

    # publishing each shard folder fills the store as publishing the whole folder does
    one_url, two_url = two_redis
    args = ("--batch-size", "512", "--shard-block", str(block))
    one = _publish(whole, one_url, *args)
    _publish(shards, two_url, *args, "--shard", "0/2")  # the folder holding the shards, as the Indexed Job does
    _publish(shards / Shard(index=1, count=2, block=block).name, two_url, *args)  # one shard folder itself
    two = redis.Redis.from_url(two_url)
    assert _store(two, skip_meta=True) == _store(one, skip_meta=True)  # meta names the folder it came from


def test_publish_to_a_real_redis_cluster_with_two_shards(tmp_path, two_redis, cluster_port) -> None:  # noqa: F811
    folder = _h_folder(tmp_path / "h")
    one = _publish(folder, two_redis[0])
    url = f"redis://127.0.0.1:{cluster_port}/0"
    for i in range(2):
        _publish(folder, url, "--shard", f"{i}/2")
    cluster = redis.RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        expected = _store(one)
        got = {k: cluster.get(k) for k in expected}
        assert got == expected
        assert sorted(cluster.scan_iter(match="scoter:*", count=1000)) == sorted(expected)
        slots = {cluster.keyslot(k) for k in expected}
        assert len(slots) > 10  # the batches really spanned many hash slots
    finally:
        cluster.close()


def test_bad_shard_flags_are_clear_errors(tmp_path, capsys) -> None:
    folder = _h_folder(tmp_path / "h")
    base = ["reason", "publish", "--h", str(folder), "--reasoning-version", "rv", "--redis-url",
            "redis://127.0.0.1:1/0", "--no-histories"]
    assert scoter_main([*base, "--shard", "2/2", "--created-at", CREATED]) == 2
    assert "not below count" in capsys.readouterr().err
    assert scoter_main([*base, "--shard", "0/2"]) == 2
    assert "--created-at" in capsys.readouterr().err
    (folder / SHARD_FILE).write_text(json.dumps({"index": 0, "count": 1, "block": 8, "n_rows": 23,
                                                 "rows": list(range(23))}))
    assert scoter_main([*base, "--shard", "0/2", "--created-at", CREATED]) == 2
    assert "already one shard" in capsys.readouterr().err
    assert scoter_main([*base, "--created-at", CREATED, "--batch-size", "3"]) == 2
    assert "does not divide" in capsys.readouterr().err
