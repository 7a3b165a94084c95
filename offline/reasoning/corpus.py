"""The leave-one-out inputs of the reasoning stages, in one place so no stage can leak a held-out target.

history(split): train -> seq[:-2], valid -> seq[:-2], test -> seq[:-1] (the contract's LeaveOneOut rows);
GVM scores against the validation target seq[-2]; the oracle teacher only sees seq[-3] (inside the train part)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from offline.data.datasets import Dataset, load_benchmark

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")


def load(name: str) -> Dataset:
    return load_benchmark(name)


def history(seq: np.ndarray, split: Split) -> np.ndarray:
    if split in ("train", "valid"):
        return seq[:-2]
    if split == "test":
        return seq[:-1]
    raise ValueError(f"split: expected train, valid or test, got {split!r}")


def oracle_example(seq: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(history seq[:-3], target seq[-3]): the last target inside the training part; None if too short."""
    if len(seq) < 4:
        return None
    return seq[:-3], int(seq[-3])


def texts(ds: Dataset, items: Sequence[int] | np.ndarray) -> list[str]:
    return [ds.item_text(int(i)) for i in items]


def sample_users(ds: Dataset, n: int, seed: int, min_len: int = 4) -> list[int]:
    """Row indices of n users (seeded), among those whose training part is non-empty. Prefix-stable: the n
    users are the first n of one seeded permutation, so a smaller run reuses a larger run's cached answers."""
    ok = [u for u, s in enumerate(ds.sequences) if len(s) >= min_len]
    if not ok:
        raise ValueError(f"{ds.name}: no user has at least {min_len} interactions")
    rng = np.random.default_rng(seed)
    return sorted(rng.permutation(ok)[:n].tolist())
