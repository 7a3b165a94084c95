"""Prefix trie: every item's tuple reaches it, absent prefixes are -1, masks match the code table."""

from __future__ import annotations

import numpy as np
import pytest

from offline.semantic_ids.codes import disambiguate
from offline.semantic_ids.trie import PrefixTrie


@pytest.fixture(scope="module")
def codes_and_sizes() -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 6, size=(300, 3))  # 216 possible tuples for 300 items: collisions guaranteed
    codes = disambiguate(raw)
    return codes, [6, 6, 6, int(codes[:, -1].max()) + 1]


@pytest.fixture(scope="module", params=["dense", "csr"])
def trie(request, codes_and_sizes):
    codes, sizes = codes_and_sizes
    t = PrefixTrie.from_codes(codes, sizes)
    return t if request.param == "dense" else t.to_csr()


def test_every_item_is_reached(trie, codes_and_sizes) -> None:
    codes, _ = codes_and_sizes
    np.testing.assert_array_equal(trie.lookup(codes), np.arange(1, len(codes) + 1))
    # batched shape [.., L] is kept
    assert trie.lookup(codes.reshape(30, 10, 4)).shape == (30, 10)


def test_absent_tuples_are_minus_one(trie, codes_and_sizes) -> None:
    codes, sizes = codes_and_sizes
    existing = {tuple(r) for r in codes}
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, 4)
    absent = np.array([r for r in grid if tuple(r) not in existing])
    assert len(absent) > 0
    assert (trie.lookup(absent) == -1).all()
    out_of_range = codes[:3].copy()
    out_of_range[:, 1] = [-1, 6, 99]
    assert (trie.lookup(out_of_range) == -1).all()


def test_valid_mask_matches_prefix_set(codes_and_sizes) -> None:
    codes, sizes = codes_and_sizes
    dense = PrefixTrie.from_codes(codes, sizes)
    csr = dense.to_csr()
    for level in range(4):
        prefixes = np.unique(codes[:, :level], axis=0) if level else np.zeros((1, 0), dtype=np.int64)
        nodes = dense.walk(prefixes)
        assert (nodes >= 0).all()
        mask = dense.valid_mask(level, nodes)
        for prefix, row in zip(prefixes, mask, strict=True):
            match = (codes[:, :level] == prefix).all(axis=1)
            expected = np.zeros(sizes[level], dtype=bool)
            expected[codes[match, level]] = True
            np.testing.assert_array_equal(row, expected)
        both = np.concatenate([nodes, [-1]])
        np.testing.assert_array_equal(csr.valid_mask(level, both), dense.valid_mask(level, both))
        assert not dense.valid_mask(level, np.array([-1])).any()


def test_tables_are_int64_with_minus_one(codes_and_sizes) -> None:
    codes, sizes = codes_and_sizes
    t = PrefixTrie.from_codes(codes, sizes)
    assert t.next_node[0].shape == (1, 6)
    assert all(tab.dtype == np.int64 for tab in t.next_node)
    assert all(tab.shape[1] == s for tab, s in zip(t.next_node, sizes, strict=True))
    assert sorted(t.leaf_item.tolist()) == list(range(1, len(codes) + 1))
    assert (t.next_node[0] >= -1).all() and (t.next_node[-1] == -1).any()


def test_save_load_roundtrip(tmp_path, codes_and_sizes) -> None:
    codes, sizes = codes_and_sizes
    t = PrefixTrie.from_codes(codes, sizes)
    loaded = PrefixTrie.load(t.save(tmp_path / "trie.npz"))
    np.testing.assert_array_equal(loaded.lookup(codes), np.arange(1, len(codes) + 1))
    assert loaded.codebook_sizes == sizes


def test_rejects_duplicates_and_bad_codes() -> None:
    with pytest.raises(ValueError, match="share a code tuple"):
        PrefixTrie.from_codes(np.array([[0, 1], [0, 1]]), [2, 2])
    with pytest.raises(ValueError, match="outside"):
        PrefixTrie.from_codes(np.array([[0, 2]]), [2, 2])
    with pytest.raises(ValueError, match="codebook_sizes"):
        PrefixTrie.from_codes(np.array([[0, 1]]), [2])
