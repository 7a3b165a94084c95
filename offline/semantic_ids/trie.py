"""Prefix trie over item code tuples, stored as arrays so beam search needs only gathers (no Python per beam).

Dense form: for code position l, `next_node[l][node, v]` is the child node id at depth l+1 of prefix `node` + v,
or -1 if no item has that prefix; depth-0 node 0 is the root, depth-L nodes are leaves and
`leaf_item[leaf]` is the item index (1-based). Nodes at each depth are numbered in lexicographic prefix order.

Size: sum over l of n_nodes_l * V_l int64 entries. Beauty (12k items, 4x256 + disambiguation) is ~ 1 + 256 +
~6k + ~12k rows of 256 -> ~37 MB as int64 (half as int32). For catalogues in the millions the dense table at the
deep levels is too large: `CsrTrie` stores only existing edges (indptr/codes/children per level), as STATIC does
for its sparse levels; a mixed layout (dense for the first levels, CSR below) follows from `to_csr()`.
This module is numpy-only; backbones/export turn the arrays into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoter.io import atomic_write


def _prefix_ids(codes: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(unique prefixes of length `depth` in lexicographic order, node id of each row)."""
    if depth == 0:
        return np.zeros((1, 0), dtype=np.int64), np.zeros(len(codes), dtype=np.int64)
    uniq, inverse = np.unique(codes[:, :depth], axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1).astype(np.int64)


def prefix_node_ids(codes: np.ndarray) -> list[np.ndarray]:
    """For each depth 1..L-1, the node id of every row's prefix (row j = item j+1): the numbering the child
    tables below use, so the ids index the same nodes."""
    codes = np.asarray(codes, dtype=np.int64)
    return [_prefix_ids(codes, depth)[1] for depth in range(1, codes.shape[1])]


def _check_codes(codes: np.ndarray, codebook_sizes: list[int]) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"codes: expected a non-empty [n_items, L] array, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes: expected integers, got {codes.dtype}")
    if len(codebook_sizes) != codes.shape[1]:
        raise ValueError(f"codebook_sizes: {len(codebook_sizes)} entries for {codes.shape[1]} code positions")
    sizes = np.asarray(codebook_sizes)
    if (codes < 0).any() or (codes >= sizes[None, :]).any():
        raise ValueError("codes: a code is outside [0, codebook_sizes[position])")
    if len(np.unique(codes, axis=0)) != len(codes):
        raise ValueError("codes: two items share a code tuple (disambiguate first)")
    return codes.astype(np.int64, copy=False)


@dataclass
class PrefixTrie:
    """Dense per-level child tables; see the module docstring."""

    next_node: list[np.ndarray]  # l -> int64 [n_nodes_l, V_l]
    leaf_item: np.ndarray  # int64 [n_leaves], 1-based item index
    codebook_sizes: list[int]

    @classmethod
    def from_codes(cls, codes: np.ndarray, codebook_sizes: list[int]) -> PrefixTrie:
        """`codes` [n_items, L]: row j is item j+1's unique tuple (i.e. `SemanticIds.codes[1:]`)."""
        codes = _check_codes(codes, codebook_sizes)
        n, length = codes.shape
        next_node: list[np.ndarray] = []
        _, parent = _prefix_ids(codes, 0)
        for depth in range(length):
            n_parents = int(parent.max()) + 1
            uniq_child, child = _prefix_ids(codes, depth + 1)
            table = np.full((n_parents, codebook_sizes[depth]), -1, dtype=np.int64)
            table[parent, codes[:, depth]] = child
            next_node.append(table)
            parent = child
        leaf_item = np.empty(n, dtype=np.int64)
        leaf_item[parent] = np.arange(1, n + 1, dtype=np.int64)
        return cls(next_node=next_node, leaf_item=leaf_item, codebook_sizes=[int(v) for v in codebook_sizes])

    @property
    def length(self) -> int:
        return len(self.next_node)

    @property
    def nbytes(self) -> int:
        return int(sum(t.nbytes for t in self.next_node) + self.leaf_item.nbytes)

    def walk(self, prefix: np.ndarray) -> np.ndarray:
        """Node ids at depth P for prefixes [..., P] (P <= L); -1 where the prefix does not exist."""
        prefix = np.asarray(prefix, dtype=np.int64)
        node = np.zeros(prefix.shape[:-1], dtype=np.int64)
        for depth in range(prefix.shape[-1]):
            table = self.next_node[depth]
            code = prefix[..., depth]
            ok = (node >= 0) & (code >= 0) & (code < table.shape[1])
            nxt = table[np.where(ok, node, 0), np.where(ok, code, 0)]
            node = np.where(ok, nxt, -1)
        return node

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Item index for full tuples [..., L]; -1 where the tuple is not an item."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.shape[-1] != self.length:
            raise ValueError(f"codes: last dimension {codes.shape[-1]}, expected {self.length}")
        leaf = self.walk(codes)
        return np.where(leaf >= 0, self.leaf_item[np.maximum(leaf, 0)], -1)

    def valid_mask(self, level: int, node_ids: np.ndarray) -> np.ndarray:
        """bool [..., V_level]: which codes may follow each depth-`level` node (-1 nodes allow none)."""
        if not 0 <= level < self.length:
            raise ValueError(f"level: {level} outside 0..{self.length - 1}")
        node_ids = np.asarray(node_ids, dtype=np.int64)
        table = self.next_node[level]
        return (table[np.maximum(node_ids, 0)] >= 0) & (node_ids >= 0)[..., None]

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array mapping (`next_node_0..`, `leaf_item`, `codebook_sizes`) for bundles/np.savez."""
        out = {f"next_node_{lvl}": t for lvl, t in enumerate(self.next_node)}
        out["leaf_item"] = self.leaf_item
        out["codebook_sizes"] = np.asarray(self.codebook_sizes, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PrefixTrie:
        sizes = [int(v) for v in arrays["codebook_sizes"]]
        tables = []
        for lvl in range(len(sizes)):
            key = f"next_node_{lvl}"
            if key not in arrays:
                raise ValueError(f"trie arrays: missing {key}")
            tables.append(np.asarray(arrays[key], dtype=np.int64))
        return cls(
            next_node=tables, leaf_item=np.asarray(arrays["leaf_item"], dtype=np.int64), codebook_sizes=sizes
        )

    def save(self, path: str | Path) -> Path:
        """np.savez to a temp file, then rename."""
        path = Path(path)
        with atomic_write(path) as tmp:
            np.savez(tmp, **self.arrays())
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrefixTrie:
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})

    def to_csr(self) -> CsrTrie:
        indptr, child_codes, children = [], [], []
        for table in self.next_node:
            rows, cols = np.nonzero(table >= 0)  # row-major: sorted by node, then code
            indptr.append(np.r_[0, np.cumsum(np.bincount(rows, minlength=table.shape[0]))].astype(np.int64))
            child_codes.append(cols.astype(np.int64))
            children.append(table[rows, cols])
        return CsrTrie(indptr, child_codes, children, self.leaf_item.copy(), list(self.codebook_sizes))


@dataclass
class CsrTrie:
    """Sparse trie: per level, the children of node n are `codes[l][indptr[l][n]:indptr[l][n+1]]` (sorted)."""

    indptr: list[np.ndarray]
    codes: list[np.ndarray]
    children: list[np.ndarray]
    leaf_item: np.ndarray
    codebook_sizes: list[int]

    @property
    def length(self) -> int:
        return len(self.indptr)

    @property
    def nbytes(self) -> int:
        arrays = [*self.indptr, *self.codes, *self.children, self.leaf_item]
        return int(sum(a.nbytes for a in arrays))

    def __post_init__(self) -> None:
        # key = node * V + code is sorted over each level's edge list (rows by node, codes sorted inside a node),
        # so one searchsorted finds any (node, code) edge for a whole batch at once
        self._keys = [
            np.repeat(np.arange(len(ptr) - 1, dtype=np.int64), np.diff(ptr)) * v + c
            for ptr, c, v in zip(self.indptr, self.codes, self.codebook_sizes, strict=True)
        ]

    def _child(self, level: int, node: np.ndarray, code: np.ndarray) -> np.ndarray:
        """Child id of (node, code), -1 if absent or if node is -1."""
        keys, v = self._keys[level], self.codebook_sizes[level]
        if len(keys) == 0:
            return np.full(node.shape, -1, dtype=np.int64)
        ok = (node >= 0) & (code >= 0) & (code < v)
        query = np.where(ok, node * v + code, -1)
        pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return np.where(ok & (keys[pos] == query), self.children[level][pos], -1)

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.shape[-1] != self.length:
            raise ValueError(f"codes: last dimension {codes.shape[-1]}, expected {self.length}")
        node = np.zeros(codes.shape[:-1], dtype=np.int64)
        for level in range(self.length):
            node = self._child(level, node, codes[..., level])
        return np.where(node >= 0, self.leaf_item[np.maximum(node, 0)], -1)

    def valid_mask(self, level: int, node_ids: np.ndarray) -> np.ndarray:
        if not 0 <= level < self.length:
            raise ValueError(f"level: {level} outside 0..{self.length - 1}")
        node_ids = np.asarray(node_ids, dtype=np.int64)
        flat = node_ids.reshape(-1)
        indptr, codes = self.indptr[level], self.codes[level]
        mask = np.zeros((len(flat), self.codebook_sizes[level]), dtype=bool)
        live = flat >= 0
        n = np.where(live, flat, 0)
        counts = np.where(live, indptr[n + 1] - indptr[n], 0)
        rows = np.repeat(np.arange(len(flat)), counts)
        starts = np.repeat(indptr[n] - np.r_[0, np.cumsum(counts)[:-1]], counts)
        mask[rows, codes[starts + np.arange(counts.sum())]] = True
        return mask.reshape(*node_ids.shape, self.codebook_sizes[level])
