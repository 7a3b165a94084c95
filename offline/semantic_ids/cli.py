"""CLI: `scoter embed` (item text embeddings) and `scoter sid build|stats` (semantic IDs + prefix trie).

No torch at import time (see docs/CONTRACTS.md); heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from offline.cli_common import add_dataset_args
from scoter.io import describe_output, format_size

log = logging.getLogger(__name__)


def _default_dir(dataset: str) -> Path:
    from scoter.paths import artifacts_root

    return artifacts_root() / dataset


def _load_dataset(args: argparse.Namespace):  # -> offline.data.datasets.Dataset
    from offline.data.datasets import load_benchmark

    return load_benchmark(args.dataset, root=args.data_root)


def _save_npy_atomic(path: Path, array) -> None:
    import numpy as np

    from scoter.io import atomic_write

    with atomic_write(path) as tmp:
        np.save(tmp, array)


def _embed_dataset(args: argparse.Namespace):  # -> np.ndarray
    """Item vectors from text (sentence encoder), from training interactions, or both mixed."""
    import torch

    from offline.semantic_ids.embeddings import EmbeddingConfig, ItemEmbedder

    torch.set_num_threads(args.threads)
    ds = _load_dataset(args)
    if args.source in ("interactions", "mixed"):
        from offline.semantic_ids.collaborative import interaction_vectors, mix

        collab = interaction_vectors(ds, dim=args.dim)
        if args.source == "interactions":
            return collab
    config = EmbeddingConfig(model=args.model, batch_size=args.batch_size, use_cache=not args.no_cache)
    text = ItemEmbedder(config).encode_items(ds)
    return text if args.source == "text" else mix(collab, text, args.text_weight)


def _embed(args: argparse.Namespace) -> int:
    emb = _embed_dataset(args)
    out = args.out or _default_dir(args.dataset) / "item_embeddings.npy"
    _save_npy_atomic(Path(out), emb)
    print(f"wrote {describe_output(Path(out))}: {emb.shape[0]} x {emb.shape[1]}")
    return 0


def _sid_build(args: argparse.Namespace) -> int:
    import numpy as np

    from offline.semantic_ids.codes import SemanticIdConfig, build_semantic_ids
    from offline.semantic_ids.trie import PrefixTrie

    pairs = (
        ("epochs", args.epochs),
        ("seed", args.seed),
        ("levels", args.levels),
        ("codebook_size", args.codebook_size),
    )
    overrides = {k: v for k, v in pairs if v is not None}
    config = SemanticIdConfig(method=args.method, **overrides)
    if args.embeddings:
        emb = np.load(args.embeddings)
    else:
        if not args.dataset:
            raise ValueError("give --dataset NAME or --embeddings PATH")
        emb = _embed_dataset(args)
    out_dir = Path(args.out) if args.out else _default_dir(args.dataset or "custom")
    sid, model = build_semantic_ids(emb, config)
    sid.report["dataset"] = args.dataset
    path = sid.save(out_dir / f"semantic_ids_{args.method}.npz")
    trie = PrefixTrie.from_codes(sid.codes[1:], sid.codebook_sizes)
    trie_path = trie.save(out_dir / f"trie_{args.method}.npz")
    if args.method == "rqvae":
        import torch

        from scoter.io import atomic_write

        with atomic_write(out_dir / "rqvae.pt") as tmp:
            torch.save({"state_dict": model.state_dict(), "config": config.model_dump()}, tmp)
    r = sid.report
    wrote = [path, trie_path] + ([out_dir / "rqvae.pt"] if args.method == "rqvae" else [])
    print(f"wrote {', '.join(describe_output(p) for p in wrote)} (trie {format_size(trie.nbytes)} in memory)")
    print(
        f"items {sid.n_items}  collision rate {r['collision_rate']:.4f}  max collisions {r['max_collisions']}  "
        f"unique after disambiguation {r['unique_after_disambiguation']:.0%}  {r['seconds']}s"
    )
    for p in r["per_level"]:
        print(f"  level {p['level']}: usage {p['usage']:.3f}  perplexity {p['perplexity']:.1f}")
    return 0


def _sid_stats(args: argparse.Namespace) -> int:
    from offline.semantic_ids.codes import SemanticIds

    sid = SemanticIds.load(args.path)
    keys = ["method", "n_items", "collision_rate", "items_in_collision", "max_collisions", "per_level"]
    print(json.dumps({k: sid.report.get(k) for k in keys}, indent=2))
    return 0


def _add_embed_args(p: argparse.ArgumentParser) -> None:
    add_dataset_args(p)
    p.add_argument("--model", default=None, help="sentence-transformers name/path (default: packaged MiniLM)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")
    p.add_argument("--source", choices=["text", "interactions", "mixed"], default="text",
                   help="item text (default), training interactions (collaborative; for catalogues without "
                   "text), or both concatenated")
    p.add_argument("--dim", type=int, default=64, help="interaction vector width (--source interactions/mixed)")
    p.add_argument("--text-weight", type=float, default=0.5, help="--source mixed: weight of the text part")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="item text embeddings (cached by content hash)")
    _add_embed_args(p)
    p.add_argument("--out", type=Path, default=None, help="default: $SCOTER_ARTIFACTS/<dataset>/item_embeddings.npy")
    p.set_defaults(func=_embed)

    sid = subparsers.add_parser("sid", help="semantic IDs")
    sid_sub = sid.add_subparsers(dest="sid_command", required=True)
    b = sid_sub.add_parser("build", help="quantise item embeddings into unique code tuples + prefix trie")
    _add_embed_args(b)
    b.add_argument("--method", choices=["rqvae", "rqkmeans"], default="rqvae")
    b.add_argument(
        "--embeddings", type=Path, default=None, help=".npy [n_items, dim] instead of --dataset text"
    )
    b.add_argument("--epochs", type=int, default=None, help="RQ-VAE epochs (default from SemanticIdConfig)")
    b.add_argument("--seed", type=int, default=None)
    b.add_argument("--levels", type=int, default=None, help="codebooks (default 4)")
    b.add_argument("--codebook-size", type=int, default=None, help="codes per level (default 256)")
    b.add_argument("--out", type=Path, default=None, help="output folder (default: $SCOTER_ARTIFACTS/<dataset>)")
    b.set_defaults(func=_sid_build)
    s = sid_sub.add_parser("stats", help="print the report of a semantic_ids_*.npz")
    s.add_argument("path", type=Path)
    s.set_defaults(func=_sid_stats)
