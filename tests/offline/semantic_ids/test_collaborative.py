"""Collaborative item vectors: items bought by the same users land together, validation and test targets never
shape them, and they quantise into unique semantic IDs without any item text."""

from __future__ import annotations

import numpy as np
import pytest

from offline.data.datasets import Dataset, Item
from offline.semantic_ids.codes import SemanticIdConfig, build_semantic_ids
from offline.semantic_ids.collaborative import interaction_vectors, mix


def two_tastes(n_users: int = 200, seed: int = 0) -> Dataset:
    """Half the users buy from items 1-10, half from 11-20; the last two items of everyone are random."""
    rng = np.random.default_rng(seed)
    seqs = []
    for u in range(n_users):
        pool = np.arange(1, 11) if u % 2 == 0 else np.arange(11, 21)
        body = rng.choice(pool, size=6, replace=False)
        seqs.append(np.concatenate([body, rng.integers(1, 21, size=2)]).astype(np.int64))
    items = [Item(item_id=str(i)) for i in range(1, 21)]
    return Dataset("tastes", [f"u{i}" for i in range(n_users)], seqs, items, 20, "synthetic")


def test_items_of_one_taste_are_closer_to_each_other_than_to_the_other() -> None:
    vec = interaction_vectors(two_tastes(), dim=4)
    assert vec.shape == (20, 4)
    sim = vec @ vec.T
    within = np.mean([sim[i, j] for i in range(10) for j in range(10) if i != j])
    across = np.mean([sim[i, j] for i in range(10) for j in range(10, 20)])
    assert within > across + 0.5


def test_validation_and_test_items_do_not_change_the_vectors() -> None:
    ds = two_tastes()
    other = Dataset(ds.name, ds.user_ids, [np.concatenate([s[:-2], [1, 1]]) for s in ds.sequences], ds.items,
                    ds.n_items, "changed-targets")
    np.testing.assert_allclose(np.abs(interaction_vectors(ds, dim=4)), np.abs(interaction_vectors(other, dim=4)),
                               atol=1e-5)


def test_collaborative_vectors_give_unique_semantic_ids_without_text() -> None:
    vec = interaction_vectors(two_tastes(), dim=4)
    sid, _ = build_semantic_ids(vec, SemanticIdConfig.small(method="rqkmeans", levels=2, codebook_size=4))
    assert len({tuple(row) for row in sid.codes[1:]}) == 20


def test_mix_weights_and_validates() -> None:
    a, b = np.ones((3, 2)), np.ones((3, 5))
    out = mix(a, b, 0.25)
    assert out.shape == (3, 7)
    np.testing.assert_allclose(np.linalg.norm(out[:, :2], axis=1), 0.75, rtol=1e-6)
    with pytest.raises(ValueError, match="text_weight"):
        mix(a, b, 1.5)
    with pytest.raises(ValueError, match="rows"):
        mix(a, np.ones((2, 5)), 0.5)
