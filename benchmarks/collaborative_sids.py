"""Collaborative semantic IDs (RQ-KMeans over item vectors learned from training interactions) beside text-based
ones: collisions, codebook usage and perplexity, trie nodes per depth, and the first-code hit rate.

First-code hit rate: the share of validation users whose target's first code is the first code of at least one
item in their history. It needs no model: it says how well the first level groups what a user goes on to buy.

    python -m benchmarks.collaborative_sids --dataset beauty --text-codes benchmarks/checkpoints/beauty_semantic_ids_rqvae.npz
    python -m benchmarks.collaborative_sids --dataset instruments
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, provenance, write_result

log = logging.getLogger(__name__)


def first_code_hit_rate(codes: np.ndarray, histories: np.ndarray, targets: np.ndarray) -> float:
    """codes [n_items+1, L] (row 0 = padding); histories left-padded [N, T]; targets [N]."""
    first = codes[:, 0]
    hist_first = np.where(histories > 0, first[histories], -1)
    return float((hist_first == first[targets][:, None]).any(axis=1).mean())


def describe(sid: Any, histories: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    from offline.semantic_ids.trie import prefix_node_ids

    report = sid.report
    nodes = [int(ids.max()) + 1 for ids in prefix_node_ids(sid.codes[1:])]
    return {
        "collision_rate": report.get("collision_rate"),
        "items_in_collision": report.get("items_in_collision"),
        "max_collisions": report.get("max_collisions"),
        "usage": [p["usage"] for p in report.get("per_level", [])],
        "perplexity": [round(p["perplexity"], 1) for p in report.get("per_level", [])],
        "trie_nodes_per_depth": nodes,
        "first_code_hit_rate_valid": round(first_code_hit_rate(sid.codes, histories, targets), 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--text-codes", type=Path, default=None, help="a text-based semantic_ids_*.npz to compare")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<dataset>_semantic_ids_collaborative.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from offline.data.datasets import LeaveOneOut, load_benchmark
    from offline.semantic_ids.codes import SemanticIdConfig, SemanticIds, build_semantic_ids
    from offline.semantic_ids.collaborative import interaction_vectors

    ds = load_benchmark(args.dataset)
    histories, targets = LeaveOneOut(ds, max_len=20).eval_examples("valid")
    t0 = time.perf_counter()
    vectors = interaction_vectors(ds, dim=args.dim)
    vec_s = time.perf_counter() - t0
    sid, _ = build_semantic_ids(vectors, SemanticIdConfig(method="rqkmeans"))
    entries = {"collaborative_rqkmeans": {**describe(sid, histories, targets),
                                          "vector_s": round(vec_s, 1), "quantise_s": sid.report.get("seconds")}}
    if args.text_codes:
        entries["text"] = {**describe(SemanticIds.load(args.text_codes), histories, targets),
                           "codes": str(args.text_codes)}
    out = args.out or RESULTS / f"{ds.name}_semantic_ids_collaborative.json"
    write_result(out, {**provenance(), "dataset": ds.name, "vector_dim": args.dim, "sids": entries})
    for name, e in entries.items():
        log.info("%s: collisions %.4f (max %s), first-code hit rate %.4f", name, e["collision_rate"],
                 e["max_collisions"], e["first_code_hit_rate_valid"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
