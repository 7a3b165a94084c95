"""Evaluation harness shared by every model: full-catalogue top-k, Recall/NDCG@k, the paper's user/item subgroup
breakdown, and a results JSON that records what produced the numbers (config, seed, commit, data, time)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from offline.data.datasets import Dataset, LeaveOneOut
from scoter.io import write_json_atomic
from scoter.provenance import git_commit, machine

__all__ = [
    "EvalConfig",
    "Recommender",
    "evaluate",
    "git_commit",
    "group_items_by_popularity",
    "group_users_by_length",
    "rank_metrics",
    "subgroup_metrics",
    "topk_from_scores",
    "write_result",
]



class EvalConfig(BaseModel):
    """Metric cut-offs and batching; defaults follow the paper (Recall/NDCG at 5, 10, 20, full ranking)."""

    ks: tuple[int, ...] = (5, 10, 20)
    batch_size: int = Field(1024, ge=1, description="users scored per chunk (bounds memory: chunk x n_items)")
    n_groups: int = Field(4, ge=1, description="user-length groups and item-popularity groups")
    exclude_history: bool = Field(True, description="never rank items already in the history (the served rule); "
                                  "False = the SCoTER paper's protocol")


class Recommender(Protocol):
    """What every model exposes to the harness."""

    def recommend(self, histories: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def topk_from_scores(
    scores: Any, k: int, histories: np.ndarray | None = None, exclude_history: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k item indices from a score matrix [N, n_items + 1] (column 0 = padding, never returned).
    Ties are broken by lower item index so results are reproducible. Optionally masks history items."""
    import torch

    s = torch.as_tensor(scores, dtype=torch.float32).clone()
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores: expected [N, n_items + 1] with n_items >= 1, got {tuple(s.shape)}")
    n_items = s.shape[1] - 1
    if not 1 <= k <= n_items:
        raise ValueError(f"k: must be in 1..{n_items}, got {k}")
    s[:, 0] = -torch.inf
    if exclude_history:
        if histories is None:
            raise ValueError("histories: required when exclude_history=True")
        h = torch.as_tensor(histories, dtype=torch.int64, device=s.device)
        s.scatter_(1, h, -torch.inf)
        s[:, 0] = -torch.inf
    vals, idx = torch.topk(s, k, dim=1, sorted=True)
    # Deterministic ties: within the selected set order by (score desc, index asc); rows where the k-th score is
    # tied with an unselected item fall back to a full stable sort (rare with float scores).
    kth = vals[:, -1:]
    n_ge = (s >= kth).sum(dim=1)
    order = torch.argsort(idx, dim=1)
    idx = torch.gather(idx, 1, order)
    vals = torch.gather(vals, 1, order)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)
    idx = torch.gather(idx, 1, order)
    vals = torch.gather(vals, 1, order)
    tied = torch.nonzero(n_ge > k).flatten()
    if len(tied):
        sub = s[tied]
        full = torch.argsort(sub, dim=1, descending=True, stable=True)[:, :k]
        idx[tied] = full
        vals[tied] = torch.gather(sub, 1, full)
    return idx.cpu().numpy().astype(np.int64), vals.cpu().numpy()


def report_ks(beam: int) -> tuple[int, ...]:
    """The cut-offs reported for a ranking of `beam` items: 5, 10, 20, capped at the beam."""
    return tuple(sorted({min(k, beam) for k in (5, 10, 20)}))


def rank_metrics(topk: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """Recall@k and NDCG@k with one relevant item per row (leave-one-out): Recall@k = hit rate,
    NDCG@k = 1 / log2(rank + 2) for a hit at 0-based rank, else 0."""
    topk = np.asarray(topk)
    targets = np.asarray(targets).reshape(-1)
    if topk.ndim != 2 or topk.shape[0] != targets.shape[0]:
        raise ValueError(f"topk: expected [N, k] with N={targets.shape[0]}, got {topk.shape}")
    if max(ks) > topk.shape[1]:
        raise ValueError(f"ks: {max(ks)} exceeds the {topk.shape[1]} ranked items")
    if len(targets) == 0:
        raise ValueError("targets: empty")
    hits = topk == targets[:, None]
    rank = np.where(hits.any(axis=1), hits.argmax(axis=1), np.iinfo(np.int64).max)
    out: dict[str, float] = {}
    for k in ks:
        hit = rank < k
        out[f"recall@{k}"] = float(hit.mean())
        gain = np.zeros(len(rank), dtype=np.float64)
        gain[hit] = 1.0 / np.log2(rank[hit] + 2.0)
        out[f"ndcg@{k}"] = float(gain.mean())
    return out


def _equal_groups(keys: np.ndarray, n_groups: int) -> np.ndarray:
    """Group id 0..n_groups-1 for each element: sort by key and cut the order into n_groups nearly equal parts
    (group 0 = smallest keys). Equal keys that straddle a cut are ordered by a fixed-seed random permutation, not
    by file order, which in the benchmarks correlates with accuracy (e.g. many users have exactly 5 items)."""
    tiebreak = np.random.default_rng(0).permutation(len(keys))
    order = np.lexsort((tiebreak, keys))
    group = np.empty(len(keys), dtype=np.int64)
    for g, part in enumerate(np.array_split(order, n_groups)):
        group[part] = g
    return group


def group_users_by_length(lengths: np.ndarray, n_groups: int = 4) -> np.ndarray:
    """Paper's user groups: four equal-sized groups by sequence length (0 = sparsest)."""
    return _equal_groups(np.asarray(lengths), n_groups)


def group_items_by_popularity(train_counts: np.ndarray, n_groups: int = 4) -> np.ndarray:
    """Paper's item groups: catalogue items (indices 1..n) in quartiles of training interaction count
    (0 = least popular). Returns [n_items + 1]; entry 0 (padding) is -1."""
    counts = np.asarray(train_counts)
    groups = np.full(len(counts), -1, dtype=np.int64)
    groups[1:] = _equal_groups(counts[1:], n_groups)
    return groups


def subgroup_metrics(
    topk: np.ndarray,
    targets: np.ndarray,
    user_lengths: np.ndarray,
    item_train_counts: np.ndarray,
    ks: Sequence[int] = (5, 10, 20),
    n_groups: int = 4,
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per user-length group and per target-item popularity group, with each group's size and bounds."""
    targets = np.asarray(targets)
    ug = group_users_by_length(user_lengths, n_groups)
    ig = group_items_by_popularity(item_train_counts, n_groups)[targets]
    lengths = np.asarray(user_lengths)
    counts = np.asarray(item_train_counts)[targets]
    out: dict[str, dict[str, dict[str, float]]] = {"user_length": {}, "item_popularity": {}}
    for name, groups, key in (("user_length", ug, lengths), ("item_popularity", ig, counts)):
        for g in range(n_groups):
            m = groups == g
            if not m.any():
                out[name][str(g)] = {"n": 0}
                continue
            res: dict[str, float] = {
                "n": int(m.sum()),
                "min": float(key[m].min()),
                "max": float(key[m].max()),
            }
            res.update(rank_metrics(topk[m], targets[m], ks))
            out[name][str(g)] = res
    return out


def evaluate(
    recommend: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    split: LeaveOneOut,
    which: Literal["valid", "test"] = "test",
    config: EvalConfig | None = None,
    subgroups: bool = True,
) -> dict[str, Any]:
    """Score every user of `which` in chunks with `recommend(histories, k)` and compute overall metrics and,
    optionally, the subgroup breakdown. Returns {"overall": ..., "subgroups": ..., "n_users", "seconds"}."""
    cfg = config or EvalConfig()
    t0 = time.perf_counter()
    hist, targets = split.eval_examples(which)
    k = max(cfg.ks)
    parts = []
    for start in range(0, len(hist), cfg.batch_size):
        items, _ = recommend(hist[start : start + cfg.batch_size], k)
        items = np.asarray(items)
        if items.shape != (min(cfg.batch_size, len(hist) - start), k):
            raise ValueError(f"recommend: expected items of shape [batch, {k}], got {items.shape}")
        parts.append(items)
    topk = np.concatenate(parts)
    out: dict[str, Any] = {"n_users": int(len(targets)), "overall": rank_metrics(topk, targets, cfg.ks)}
    if subgroups:
        out["subgroups"] = subgroup_metrics(
            topk, targets, split.sequence_lengths(), split.train_item_counts(), cfg.ks, cfg.n_groups
        )
    out["seconds"] = time.perf_counter() - t0
    return out


def write_result(
    path: Path | str,
    metrics: dict[str, Any],
    config: dict[str, Any] | BaseModel,
    seed: int | None,
    dataset: Dataset,
    elapsed_s: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write a results JSON atomically (temp file, then rename) with provenance: git commit, data checksum,
    date, machine. Returns the written document."""
    cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    doc: dict[str, Any] = {
        "metrics": metrics,
        "config": cfg,
        "seed": seed,
        "dataset": {"name": dataset.name, "checksum": dataset.checksum, **dataset.stats()},
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"label": machine(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "elapsed_s": elapsed_s,
        **extra,
    }
    write_json_atomic(path, doc, default=str)
    return doc
