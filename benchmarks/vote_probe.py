"""The recommendation step's vote on an unchanged backbone (no fusion training): item score + w * cos(query,
item text), w picked on validation, for several queries in the catalogue's text space:

  history      the recency-weighted mean of the history items' text vectors (no reasoning at all)
  h:NAME       the last step (the recommendation) of an H folder's H (e.g. the encoder student's)

Exhaustive scoring of every item with the served rule (history items excluded), so it is the ranking the beam
reproduces; paired per-user differences to w = 0 on the test split, overall and by target-popularity quartile.

    python -m benchmarks.vote_probe --checkpoint benchmarks/checkpoints/beauty_sasrec_sid.pt \\
        --codes benchmarks/checkpoints/beauty_semantic_ids_rqvae.npz --h-folder real=artifacts/beauty/reasoning_real
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import RESULTS, provenance, write_result
from offline.backbones.train import build_model
from offline.data.datasets import LeaveOneOut
from offline.data.evaluation import group_items_by_popularity
from offline.data.splits import Splits
from offline.reasoning import corpus
from offline.reasoning.encode import history_vectors, item_embeddings
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import load_checkpoint
from scoter import h_folder

log = logging.getLogger("vote_probe")
WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


def backbone_scores(model: Any, hist: np.ndarray, batch: int = 512) -> torch.Tensor:
    """Every item's score [N, n_items + 1] (column 0, padding, at -inf): the exhaustive scorer the beam is tested
    against."""
    out = []
    with torch.no_grad():
        items = torch.arange(1, model.n_items + 1)
        for s in range(0, len(hist), batch):
            h = torch.as_tensor(hist[s:s + batch]).long()
            out.append(model.sequence_log_prob(h, items.expand(len(h), -1)))
    scores = torch.cat(out)
    return torch.cat([torch.full_like(scores[:, :1], float("-inf")), scores], dim=1)


def hits_at_10(scores: torch.Tensor, hist: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    s = scores.clone().scatter_(1, torch.as_tensor(hist).long(), float("-inf"))
    s[:, 0] = float("-inf")
    return (s.topk(10, 1).indices == torch.as_tensor(tgt)[:, None]).any(1).numpy().astype(float)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--codes", type=Path, required=True)
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--h-folder", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--out", type=Path, default=RESULTS / "beauty_vote_probe.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint)
    codes = SemanticIds.load(args.codes)
    model = build_model(ck["backbone"], codes.codes, codes.codebook_sizes, ck["model_config"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
    model.eval()
    if model.head is None:
        ap.error("--checkpoint: the vote needs the item-aware head")
    ds, splits = corpus.load(args.dataset), Splits.load(args.dataset)
    items = torch.nn.functional.normalize(torch.as_tensor(item_embeddings(ds), dtype=torch.float32), dim=-1)
    items = torch.cat([items.new_zeros(1, items.shape[1]), items])
    loo = LeaveOneOut(ds)
    popularity = group_items_by_popularity(loo.train_item_counts())
    queries: dict[str, dict[str, np.ndarray]] = {"history": {}}
    for split in ("valid", "test"):
        hist = getattr(splits, split)[0]
        queries["history"][split] = history_vectors([r[r > 0].tolist() for r in hist], items[1:].numpy())
    for spec in args.h_folder:
        name, path = spec.split("=", 1)
        queries[f"h:{name}"] = {s: np.asarray(h_folder.read_split(path, s)[0][:, -1], np.float32)
                                for s in ("valid", "test")}
    base = {s: backbone_scores(model, getattr(splits, s)[0]) for s in ("valid", "test")}
    res: dict[str, Any] = {}
    for name, q in queries.items():
        cos = {s: torch.nn.functional.normalize(torch.as_tensor(q[s]), dim=-1) @ items.T for s in q}
        valid = {w: float(hits_at_10(base["valid"] + w * cos["valid"], *splits.valid).mean()) for w in WEIGHTS}
        w = max(valid, key=lambda k: (valid[k], -k))
        hist, tgt = splits.test
        on, off = hits_at_10(base["test"] + w * cos["test"], hist, tgt), hits_at_10(base["test"], hist, tgt)
        d = on - off
        groups = popularity[tgt]
        res[name] = {"valid_recall@10_by_weight": valid, "weight": w, "test_recall@10": float(on.mean()),
                     "backbone_test_recall@10": float(off.mean()),
                     "paired": {"diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))),
                                "relative": float(d.mean() / off.mean())},
                     "relative_by_popularity_quartile": {str(g): float(d[groups == g].mean() / off[groups == g].mean())
                                                         for g in range(4)}}
        log.info("%s: weight %g, test R@10 %.4f vs %.4f (%+.1f%%)", name, w, on.mean(), off.mean(),
                 100 * res[name]["paired"]["relative"])
    write_result(args.out, {"benchmark": "vote_probe", **provenance(), "checkpoint": str(args.checkpoint),
                            "queries": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
