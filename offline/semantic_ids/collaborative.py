"""Item vectors learned from interactions, for collaborative semantic IDs (RQ-KMeans over them), alone or mixed
with text vectors.

Why: text-based codes group items that read alike, which is not always what is bought together; a catalogue
without item text (Instruments, many shops' own) has no text codes at all. A truncated SVD of the user x item
matrix of training interactions places items that the same users buy near each other. Only each user's training
part (sequence[:-2]) enters, so no validation or test target shapes the codes.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.preprocessing import normalize

from offline.data.datasets import Dataset


def interaction_vectors(dataset: Dataset, dim: int = 64, seed: int = 0) -> np.ndarray:
    """[n_items, dim] item vectors (row j = item j+1) from the user x item matrix of training interactions.

    Users are weighted by 1/sqrt(their item count) (so heavy users do not dominate) and items are L2-normalised
    after the SVD; items never seen in training get a zero vector (their codes then come from disambiguation)."""
    rows, cols = [], []
    for u, seq in enumerate(dataset.sequences):
        items = np.unique(np.asarray(seq[:-2], dtype=np.int64))
        rows.append(np.full(len(items), u))
        cols.append(items - 1)
    r, c = np.concatenate(rows), np.concatenate(cols)
    weight = 1.0 / np.sqrt(np.bincount(r, minlength=dataset.n_users)[r])
    matrix = sparse.csr_matrix((weight, (r, c)), shape=(dataset.n_users, dataset.n_items))
    k = min(dim, min(matrix.shape) - 1)
    if k < 1:
        raise ValueError(f"{dataset.name}: too few users or items for interaction vectors (dim {dim})")
    svd = TruncatedSVD(n_components=k, random_state=seed, algorithm="randomized", n_iter=7)
    vectors = svd.fit(matrix).components_.T * svd.singular_values_  # [n_items, k]
    return normalize(vectors).astype(np.float32)


def mix(collaborative: np.ndarray, text: np.ndarray, text_weight: float) -> np.ndarray:
    """Concatenate L2-normalised collaborative and text vectors, the text part scaled by ``text_weight`` in [0,1]
    (and the collaborative part by 1 - text_weight)."""
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight: must be in [0, 1], got {text_weight}")
    if collaborative.shape[0] != text.shape[0]:
        raise ValueError(f"text: {text.shape[0]} rows for {collaborative.shape[0]} items")
    return np.hstack([(1.0 - text_weight) * normalize(collaborative), text_weight * normalize(text)]).astype(
        np.float32
    )
