"""Semantic IDs: uniqueness after disambiguation, determinism, collision statistics, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from offline.semantic_ids.codes import (
    SemanticIdConfig,
    SemanticIds,
    atomic_output,
    build_semantic_ids,
    code_stats,
    disambiguate,
)


@pytest.fixture(scope="module")
def clustered_embeddings() -> np.ndarray:
    """400 items in 8 tight clusters: many raw collisions at small codebooks, so disambiguation is exercised."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 24))
    x = centers[rng.integers(0, 8, size=400)] + 0.05 * rng.normal(size=(400, 24))
    return x.astype(np.float32)


@pytest.mark.parametrize("method", ["rqkmeans", "rqvae"])
def test_unique_and_deterministic(clustered_embeddings: np.ndarray, method: str) -> None:
    config = SemanticIdConfig.small(method=method, codebook_size=8, epochs=20)
    sid, _ = build_semantic_ids(clustered_embeddings, config)
    again, _ = build_semantic_ids(clustered_embeddings, config)
    body = sid.codes[1:]
    assert sid.codes.shape == (401, config.levels + 1)
    assert len(np.unique(body, axis=0)) == 400
    assert sid.report["unique_after_disambiguation"] == 1.0
    np.testing.assert_array_equal(sid.codes, again.codes)
    assert (sid.codes[0] == 0).all()  # padding row
    assert sid.codebook_sizes[:-1] == [8] * config.levels
    assert sid.codebook_sizes[-1] == sid.report["max_collisions"] == body[:, -1].max() + 1
    sid.validate()


def test_different_seed_changes_rqvae_codes(clustered_embeddings: np.ndarray) -> None:
    a, _ = build_semantic_ids(clustered_embeddings, SemanticIdConfig.small(seed=1, epochs=10))
    b, _ = build_semantic_ids(clustered_embeddings, SemanticIdConfig.small(seed=2, epochs=10))
    assert not np.array_equal(a.codes, b.codes)


def test_code_stats_on_constructed_case() -> None:
    # tuples: A x3, B x2, C x1 -> 6 items, 3 unique tuples
    codes = np.array([[0, 1], [0, 1], [0, 1], [2, 3], [2, 3], [2, 0]])
    s = code_stats(codes, codebook_size=4)
    assert s["unique_tuples"] == 3
    assert s["collision_rate"] == pytest.approx(1 - 3 / 6)
    assert s["items_in_collision"] == pytest.approx(5 / 6)
    assert s["max_collisions"] == 3
    lvl0, lvl1 = s["per_level"]
    assert lvl0["used_codes"] == 2 and lvl0["usage"] == pytest.approx(0.5)
    assert lvl0["perplexity"] == pytest.approx(2.0)  # codes 0 and 2, 3 items each: uniform over 2
    p = np.array([1, 3, 2]) / 6  # level 1: codes 0 x1, 1 x3, 3 x2
    assert lvl1["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert lvl1["unique_prefixes"] == 3


def test_disambiguate_numbers_groups_by_item_order() -> None:
    codes = np.array([[1, 1], [0, 0], [1, 1], [1, 1], [0, 0], [2, 2]])
    out = disambiguate(codes)
    np.testing.assert_array_equal(out[:, -1], [0, 0, 1, 2, 1, 0])
    np.testing.assert_array_equal(out[:, :2], codes)


def test_save_load_roundtrip(tmp_path, clustered_embeddings: np.ndarray) -> None:
    sid, _ = build_semantic_ids(clustered_embeddings, SemanticIdConfig.small(method="rqkmeans"))
    path = sid.save(tmp_path / "sid.npz")
    loaded = SemanticIds.load(path)
    np.testing.assert_array_equal(loaded.codes, sid.codes)
    assert loaded.codebook_sizes == sid.codebook_sizes
    assert loaded.report["collision_rate"] == sid.report["collision_rate"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sid.json", "sid.npz"]  # no temp files left


def test_bad_input_names_the_field(clustered_embeddings: np.ndarray) -> None:
    bad = clustered_embeddings.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="embeddings"):
        build_semantic_ids(bad, SemanticIdConfig.small())
    with pytest.raises(ValueError, match="codebook_size"):
        build_semantic_ids(clustered_embeddings[:10], SemanticIdConfig.small())
    with pytest.raises(ValueError, match="hidden_dims"):
        SemanticIdConfig(hidden_dims=[0])
    with pytest.raises(ValueError, match="epochs"):
        SemanticIdConfig(epochs=0)


def test_load_rejects_duplicate_tuples(tmp_path) -> None:
    sid = SemanticIds(codes=np.array([[0, 0], [1, 0], [1, 0]]), codebook_sizes=[2, 1])
    with pytest.raises(ValueError, match="share a code tuple"):
        sid.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_atomic_output_keeps_old_file_on_error(tmp_path) -> None:
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
