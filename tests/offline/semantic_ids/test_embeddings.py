"""Item embeddings: the real packaged MiniLM on a few short texts; second call is a cache hit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from offline.semantic_ids.embeddings import EmbeddingConfig, ItemEmbedder, texts_key

TEXTS = [
    "red nail polish",
    "matte lipstick, Brand: X",
    "shampoo for dry hair",
    "sunscreen SPF 50",
    "hair dryer",
]


@pytest.fixture(scope="module")
def encoder():
    import torch

    from offline.semantic_ids.embeddings import load_sentence_encoder

    torch.set_num_threads(1)
    return load_sentence_encoder()


def test_encode_then_cache_hit(tmp_path, encoder) -> None:
    config = EmbeddingConfig(cache_dir=tmp_path, show_progress=False)
    first = ItemEmbedder(config, encoder=encoder)
    emb = first.encode_texts(TEXTS)
    assert first.last_cache_hit is False
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy" and not files[0].name.startswith(".")

    second = ItemEmbedder(config)  # no encoder given: it would be loaded lazily only on a cache miss
    np.testing.assert_array_equal(second.encode_texts(TEXTS), emb)
    assert second._encoder is None
    assert second.last_cache_hit is True
    # a changed text is a different key -> recomputed
    third = ItemEmbedder(config, encoder=encoder)
    third.encode_texts([*TEXTS[:4], "hair straightener"])
    assert third.last_cache_hit is False
    # similar texts are closer than unrelated ones
    sims = emb @ emb.T
    assert sims[2, 4] > sims[2, 3]


def test_encode_items_uses_item_text_order(tmp_path, encoder) -> None:
    @dataclass
    class Tiny:
        n_items: int = 3

        def item_text(self, i: int) -> str:
            return TEXTS[i - 1]

    emb = ItemEmbedder(
        EmbeddingConfig(cache_dir=tmp_path, show_progress=False), encoder=encoder
    ).encode_items(Tiny())
    direct = ItemEmbedder(
        EmbeddingConfig(use_cache=False, show_progress=False), encoder=encoder
    ).encode_texts(TEXTS[:3])
    np.testing.assert_allclose(emb, direct, atol=1e-6)


def test_key_depends_on_model_and_texts() -> None:
    assert texts_key("a", ["x", "y"], True) != texts_key("b", ["x", "y"], True)
    assert texts_key("a", ["x", "y"], True) != texts_key("a", ["xy"], True)
    assert texts_key("a", ["x"], True) != texts_key("a", ["x"], False)


def test_bad_input() -> None:
    embedder = ItemEmbedder(EmbeddingConfig(use_cache=False))
    with pytest.raises(ValueError, match="texts"):
        embedder.encode_texts([])
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        embedder.encode_texts(["ok", None])  # type: ignore[list-item]
