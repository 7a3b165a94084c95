"""Parity between the PyTorch ranking module and the exported graph: same top-N lists, same scores.

Both sides get identical inputs; both break ties the same way (ONNX TopK and torch's stable sort both put the
lower index first among equal values). A list that differs only where two candidates have the same score is
counted separately as a tie-order difference, so a real numerical divergence is never hidden by a tie.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from scoter.ranker import BundleRanker, RankerConfig

log = logging.getLogger(__name__)

FEED_ORDER = ("history", "history_mask", "reasoning", "reasoning_present")


class VerifyConfig(BaseModel):
    """Parity thresholds (fp32) and how the comparison batches users."""

    topn: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    min_list_agreement: float = Field(0.999, ge=0.0, le=1.0)
    max_score_diff: float = Field(1e-4, gt=0.0)
    tie_tolerance: float = Field(1e-6, ge=0.0)
    variants: tuple[str, ...] = ("fp32", "fp16", "int8")
    intra_op_threads: int = Field(1, ge=0)
    progress: bool = False


def _batches(n: int, batch_size: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress, mininterval=10)


def run_torch(module: torch.nn.Module, feeds: dict[str, np.ndarray], batch_size: int,
              progress: bool = False) -> tuple[np.ndarray, ...]:
    """Eager PyTorch ranking of every row in `feeds`, in batches."""
    module.eval()
    n = feeds["history"].shape[0]
    ids, scores = [], []
    with torch.no_grad():
        for start in _batches(n, batch_size, "pytorch", progress):
            args = [torch.from_numpy(np.ascontiguousarray(feeds[k][start : start + batch_size])) for k in FEED_ORDER]
            i, s = module(*args)
            ids.append(i.numpy())
            scores.append(s.float().numpy())
    return np.concatenate(ids), np.concatenate(scores)


def run_onnx(ranker: BundleRanker, feeds: dict[str, np.ndarray], batch_size: int,
             progress: bool = False) -> tuple[np.ndarray, ...]:
    n = feeds["history"].shape[0]
    ids, scores = [], []
    for start in _batches(n, batch_size, f"onnxruntime {ranker.config.variant}", progress):
        i, s = ranker.rank(*(feeds[k][start : start + batch_size] for k in FEED_ORDER))
        ids.append(i)
        scores.append(s)
    return np.concatenate(ids), np.concatenate(scores)


def compare_rankings(ref_ids: np.ndarray, ref_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray,
                     topn: int, tie_tolerance: float) -> dict[str, Any]:
    """Agreement of top-`topn` lists and scores between a reference and a candidate ranking."""
    ref_ids, ids = ref_ids[:, :topn], ids[:, :topn]
    ref_scores, scores = ref_scores[:, :topn], scores[:, :topn]
    equal = (ref_ids == ids).all(axis=1)
    # A mismatch explained by ties: every differing position holds a score equal (within tolerance) to a
    # neighbour's, and the candidate's score there agrees with the reference.
    tied = np.zeros_like(ref_scores, dtype=bool)
    gap = np.abs(np.diff(ref_scores, axis=1)) <= tie_tolerance
    tied[:, 1:] |= gap
    tied[:, :-1] |= gap
    differs = ref_ids != ids
    tie_only = ~equal & ~(differs & ~tied).any(axis=1)
    same_inf = (np.isfinite(ref_scores) == np.isfinite(scores)).all()
    # Scores are compared item by item (the same user and item in both lists), not position by position: where the
    # lists differ (tie order, or a user inside the list-agreement allowance), position k holds two different items
    # and their score gap says nothing about numerical agreement.
    same_item = (ids[:, :, None] == ref_ids[:, None, :]) & np.isfinite(scores)[:, :, None] \
        & np.isfinite(ref_scores)[:, None, :]
    with np.errstate(invalid="ignore"):  # -inf - -inf (padding pairs) is NaN; same_item masks those pairs out
        pair_gap = np.abs(scores[:, :, None].astype(np.float64) - ref_scores[:, None, :])
    diff = np.where(same_item, pair_gap, 0.0).max(axis=2)
    finite = same_item.any(axis=2)  # positions whose item the reference list also holds
    return {
        "users": int(ref_ids.shape[0]),
        "topn": topn,
        "list_agreement": float(equal.mean()),
        "list_agreement_up_to_ties": float((equal | tie_only).mean()),
        "tie_order_differences": int(tie_only.sum()),
        "max_abs_score_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_score_diff": float(diff[finite].mean()) if finite.any() else 0.0,
        "padding_agrees": bool(same_inf),
        "overlap_at_n": float(np.mean([len(set(a) & set(b)) / topn for a, b in zip(ref_ids, ids, strict=True)])),
    }


def verify_bundle(module: torch.nn.Module, bundle_dir: str | Path, feeds: dict[str, np.ndarray],
                  config: VerifyConfig | None = None) -> dict[str, Any]:
    """Rank `feeds` with PyTorch and with every requested graph variant; fp32 must pass the thresholds."""
    config = config or VerifyConfig()
    start = time.perf_counter()
    ref_ids, ref_scores = run_torch(module, feeds, config.batch_size, config.progress)
    torch_seconds = time.perf_counter() - start
    report: dict[str, Any] = {"torch_seconds": round(torch_seconds, 3), "variants": {}}
    for variant in config.variants:
        ranker = BundleRanker(bundle_dir, RankerConfig(variant=variant, intra_op_threads=config.intra_op_threads))
        start = time.perf_counter()
        ids, scores = run_onnx(ranker, feeds, config.batch_size, config.progress)
        result = compare_rankings(ref_ids, ref_scores, ids, scores, config.topn, config.tie_tolerance)
        result.update(provider=ranker.provider, onnx_seconds=round(time.perf_counter() - start, 3))
        report["variants"][variant] = result
        log.info("%s: top-%d lists equal for %.4f of %d users, max |score diff| %.2e", variant, config.topn,
                 result["list_agreement"], result["users"], result["max_abs_score_diff"])
    fp32 = report["variants"].get("fp32")
    report["passed"] = bool(
        fp32 is not None
        and fp32["list_agreement"] >= config.min_list_agreement
        and fp32["max_abs_score_diff"] <= config.max_score_diff
        and fp32["padding_agrees"]
    )
    report["thresholds"] = {"min_list_agreement": config.min_list_agreement, "max_score_diff": config.max_score_diff}
    return report
