"""Sentence encoding of reasoning steps into H (K x D) and of catalogue items for validation."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def embedding_dim(encoder: Any) -> int:
    """Output dimension (sentence-transformers >= 5 renamed the getter)."""
    getter = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(getter())


@functools.lru_cache(maxsize=1)
def sentence_encoder() -> Any:
    """The packaged MiniLM (384-d), loaded once per process."""
    from offline.embeddings import load_sentence_encoder

    return load_sentence_encoder()


def embed(texts: Sequence[str], *, batch_size: int = 64, encoder: Any = None,
          progress: bool = False) -> np.ndarray:
    """L2-normalised float32 [len(texts), D]."""
    enc = encoder or sentence_encoder()
    if not texts:
        return np.zeros((0, embedding_dim(enc)), np.float32)
    return enc.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                      show_progress_bar=progress).astype(np.float32)


def pooled_cached(texts: Sequence[str], *, max_seq_length: int, batch_size: int = 64,
                  progress: bool = True) -> np.ndarray:
    """Frozen-encoder embeddings of many texts (e.g. every user's history), cached on disk by sha256 of
    (model, max_seq_length, texts): the expensive pass over all users runs once and is shared by re-runs."""
    import copy
    import hashlib

    from offline.reasoning.io import save_npy
    from scoter.paths import cache_root

    h = hashlib.sha256(f"minilm\0{max_seq_length}\0{len(texts)}\0".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = cache_root() / "reasoning" / f"pooled-{h.hexdigest()[:24]}.npy"
    if path.exists():
        log.info("pooled embeddings cache hit: %s", path)
        return np.load(path)
    enc = copy.deepcopy(sentence_encoder())
    enc.max_seq_length = max_seq_length
    out = embed(texts, batch_size=batch_size, encoder=enc, progress=progress)
    save_npy(path, out)
    return out


def history_vectors(histories: Sequence[Sequence[int]], item_emb: np.ndarray, *, max_items: int = 10,
                    decay: float = 0.8) -> np.ndarray:
    """[N, D] unit vectors: recency-weighted mean of the last `max_items` items' embeddings (1-based ids)."""
    out = np.zeros((len(histories), item_emb.shape[1]), np.float32)
    for n, h in enumerate(histories):
        recent = np.asarray(h, np.int64)[-max_items:]
        if len(recent) == 0:
            continue
        w = decay ** np.arange(len(recent) - 1, -1, -1, dtype=np.float32)  # newest item weight 1
        v = (w[:, None] * item_emb[recent - 1]).sum(0)
        out[n] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def item_embeddings(dataset: Any) -> np.ndarray:
    """Catalogue embeddings [n_items, D] (row i-1 = item i), cached on disk by offline.embeddings."""
    from offline.embeddings import EmbeddingConfig, ItemEmbedder

    return ItemEmbedder(EmbeddingConfig(show_progress=False), encoder=sentence_encoder()).encode_items(dataset)


def chains_to_h(chains: Sequence[Sequence[str] | None], k: int, *, batch_size: int = 64,
                encoder: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Step texts per user -> (H [N, K, D] float32, present [N] bool). A missing chain gives a zero H and
    present=False, so the fusion model sees it as absent rather than as a real (zero) reasoning."""
    enc = encoder or sentence_encoder()
    d = embedding_dim(enc)
    h = np.zeros((len(chains), k, d), np.float32)
    present = np.zeros(len(chains), bool)
    flat, where = [], []
    for i, c in enumerate(chains):
        if c is None:
            continue
        if len(c) != k:
            raise ValueError(f"chains[{i}]: {len(c)} steps, template has K={k}")
        present[i] = True
        for j, step in enumerate(c):
            flat.append(step)
            where.append((i, j))
    if flat:
        vecs = embed(flat, batch_size=batch_size, encoder=enc)
        rows, cols = zip(*where, strict=True)
        h[list(rows), list(cols)] = vecs
    return h, present
