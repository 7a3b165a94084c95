"""The leave-one-out arrays every trained model reads: one type, so the backbones, fusion and evaluation all
split a dataset the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline.data.datasets import Dataset, LeaveOneOut, load_benchmark


@dataclass
class Splits:
    """Leave-one-out arrays for one dataset (histories left-padded to max_len)."""

    dataset: Dataset
    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    @classmethod
    def load(cls, name: str, max_len: int = 20, max_users: int | None = None, root: Path | None = None) -> Splits:
        ds = load_benchmark(name, root)
        if max_users:
            ds = ds.subset(max_users)
        loo = LeaveOneOut(ds, max_len=max_len)
        return cls(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
