"""Benchmark: Beauty item texts -> MiniLM embeddings -> RQ-VAE and RQ-KMeans semantic IDs -> prefix trie.

Writes benchmarks/results/beauty_semantic_ids.json (collision rate, per-level usage/perplexity, uniqueness,
wall time, trie sizes) and the artifacts other stages use:
artifacts/beauty/item_embeddings.npy, artifacts/beauty/semantic_ids_{rqvae,rqkmeans}.npz (+ .json report),
artifacts/beauty/trie_{rqvae,rqkmeans}.npz.

    OMP_NUM_THREADS=1 python -m benchmarks.beauty_semantic_ids [--epochs N] [--methods rqvae rqkmeans]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import RESULTS, provenance, write_result
from offline.data.datasets import load_benchmark
from offline.semantic_ids.codes import SemanticIdConfig, build_semantic_ids
from offline.semantic_ids.embeddings import EmbeddingConfig, ItemEmbedder
from offline.semantic_ids.trie import PrefixTrie
from scoter.io import atomic_write
from scoter.paths import artifacts_root

log = logging.getLogger("beauty_semantic_ids")


def _trie_timing(trie: PrefixTrie, codes: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Vectorised lookup of every item's tuple, and a valid_mask gather for 20 beams x 256 users per level."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        found = trie.lookup(codes)
    lookup_s = (time.perf_counter() - t0) / repeats
    assert (found == np.arange(1, len(codes) + 1)).all(), "trie lookup does not return every item"
    rng = np.random.default_rng(0)
    mask_ms = []
    for level in range(trie.length):
        nodes = rng.integers(0, trie.next_node[level].shape[0], size=(256, 20))
        t0 = time.perf_counter()
        for _ in range(repeats):
            trie.valid_mask(level, nodes)
        mask_ms.append(1000 * (time.perf_counter() - t0) / repeats)
    return {"lookup_all_items_ms": 1000 * lookup_s, "valid_mask_256x20_ms_per_level": mask_ms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="+", default=["rqkmeans", "rqvae"], choices=["rqkmeans", "rqvae"])
    ap.add_argument("--epochs", type=int, default=None, help="RQ-VAE epochs (default: SemanticIdConfig)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--out", type=Path, default=RESULTS / "beauty_semantic_ids.json"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    art = artifacts_root() / "beauty"
    art.mkdir(parents=True, exist_ok=True)
    ds = load_benchmark("beauty")
    t0 = time.perf_counter()
    embedder = ItemEmbedder(EmbeddingConfig())
    emb = embedder.encode_items(ds)
    embed_s = time.perf_counter() - t0
    with atomic_write(art / "item_embeddings.npy") as tmp:
        np.save(tmp, emb)

    result: dict = {
        "benchmark": "beauty_semantic_ids",
        **provenance(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "dataset": {"name": ds.name, "n_items": ds.n_items, "checksum": ds.checksum},
        "embeddings": {
            "model": embedder.config.model_id(),
            "shape": list(emb.shape),
            "seconds": round(embed_s, 2),
            "cache_hit": embedder.last_cache_hit,
        },
        "methods": {},
    }
    for method in args.methods:
        overrides = {"epochs": args.epochs} if args.epochs and method == "rqvae" else {}
        config = SemanticIdConfig(method=method, seed=args.seed, **overrides)
        sid, _ = build_semantic_ids(emb, config)
        sid.report["dataset"] = "beauty"
        sid.save(art / f"semantic_ids_{method}.npz")
        trie = PrefixTrie.from_codes(sid.codes[1:], sid.codebook_sizes)
        trie.save(art / f"trie_{method}.npz")
        csr = trie.to_csr()
        r = sid.report
        result["methods"][method] = {
            "seconds": r["seconds"],
            "collision_rate": r["collision_rate"],
            "items_in_collision": r["items_in_collision"],
            "max_collisions": r["max_collisions"],
            "unique_tuples": r["unique_tuples"],
            "unique_after_disambiguation": r["unique_after_disambiguation"],
            "codebook_sizes": sid.codebook_sizes,
            "per_level": r["per_level"],
            "best_epoch": r.get("best_epoch"),
            "config": r["config"],
            "trie": {
                "nodes_per_depth": [int(t.shape[0]) for t in trie.next_node],
                "dense_mib": trie.nbytes / 2**20,
                "csr_mib": csr.nbytes / 2**20,
                **_trie_timing(trie, sid.codes[1:]),
            },
        }
        log.info(
            "%s: %s",
            method,
            json.dumps({k: result["methods"][method][k] for k in ("collision_rate", "seconds")}),
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
