"""Sentence encoding of reasoning steps into H (K x D) and of catalogue items for validation."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


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
        return np.zeros((0, enc.get_sentence_embedding_dimension()), np.float32)
    return enc.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                      show_progress_bar=progress).astype(np.float32)


def item_embeddings(dataset: Any) -> np.ndarray:
    """Catalogue embeddings [n_items, D] (row i-1 = item i), cached on disk by offline.embeddings."""
    from offline.embeddings import EmbeddingConfig, ItemEmbedder

    return ItemEmbedder(EmbeddingConfig(show_progress=False), encoder=sentence_encoder()).encode_items(dataset)


def chains_to_h(chains: Sequence[Sequence[str] | None], k: int, *, batch_size: int = 64,
                encoder: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Step texts per user -> (H [N, K, D] float32, present [N] bool). A missing chain gives a zero H and
    present=False, so the fusion model sees it as absent rather than as a real (zero) reasoning."""
    enc = encoder or sentence_encoder()
    d = enc.get_sentence_embedding_dimension()
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
