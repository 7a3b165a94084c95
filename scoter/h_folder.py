"""Contract 3: the H folder, the reasoning stage's output that fusion training, evaluation, export checks and
publishing read. Torch-free (numpy only); docs/CONTRACTS.md describes the files.

    H_{train,valid,test}.npy      [rows, K, D] float16/float32, one row per user
    present_{train,valid,test}.npy [rows] bool (missing file = every row present)
    user_ids.json                 [rows] user ids, the row order of every file above
    H_train_examples.npy          optional [examples, K, D]: one H per training prefix (LeaveOneOut order)
    meta.json                     provenance (K, D, source, template, ...)

This module is the only reader and the only writer of those files, so their layout lives in one place. Every
file is written atomically (temp file, then rename), and each writer logs what it wrote with its size on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scoter.io import describe_output, disk_usage, format_size, read_json, save_npy, write_json

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
USER_IDS = "user_ids.json"
META = "meta.json"
TRAIN_EXAMPLES = "H_train_examples.npy"


def h_path(folder: Path | str, split: str) -> Path:
    return Path(folder) / f"H_{split}.npy"


def present_path(folder: Path | str, split: str) -> Path:
    return Path(folder) / f"present_{split}.npy"


# -- writer ---------------------------------------------------------------------------------------------------
def write_split(folder: Path | str, split: str, H: np.ndarray, present: np.ndarray | None = None) -> None:
    """H_{split}.npy and present_{split}.npy (all rows present when `present` is None)."""
    if H.ndim != 3:
        raise ValueError(f"H_{split}: expected [users, K, D], got shape {H.shape}")
    present = np.ones(len(H), bool) if present is None else np.asarray(present, bool)
    if present.shape != (len(H),):
        raise ValueError(f"present_{split}: expected [{len(H)}] flags, got shape {present.shape}")
    save_npy(h_path(folder, split), H)
    save_npy(present_path(folder, split), present)
    flags = present_path(folder, split)
    log.info("wrote %s %s %s, %d/%d present (%s %s)", describe_output(h_path(folder, split)), list(H.shape),
             H.dtype, int(present.sum()), len(present), flags.name, format_size(disk_usage(flags)[0]))


def write_user_ids(folder: Path | str, user_ids: Sequence[str]) -> None:
    write_json(Path(folder) / USER_IDS, [str(u) for u in user_ids])
    log.info("wrote %s: %d user ids", describe_output(Path(folder) / USER_IDS), len(user_ids))


def write_train_examples(folder: Path | str, H: np.ndarray) -> None:
    save_npy(Path(folder) / TRAIN_EXAMPLES, H)
    log.info("wrote %s %s %s", describe_output(Path(folder) / TRAIN_EXAMPLES), list(H.shape), H.dtype)


def write_meta(folder: Path | str, meta: dict[str, Any]) -> None:
    """meta.json, then one line with the whole folder's size (meta.json is the folder's last file written)."""
    write_json(Path(folder) / META, meta)
    shape = f", K={meta['K']}, D={meta['D']}" if "K" in meta and "D" in meta else ""
    log.info("wrote %s (%s); H folder %s%s", META, format_size(disk_usage(Path(folder) / META)[0]),
             describe_output(folder), shape)


# -- reader ---------------------------------------------------------------------------------------------------
def read_user_ids(folder: Path | str) -> list[str] | None:
    """The row order of the folder's files, or None when it has no user_ids.json."""
    path = Path(folder) / USER_IDS
    if not path.exists():
        return None
    ids = read_json(path)
    if not isinstance(ids, list):
        raise ValueError(f"{path}: expected a JSON list of user ids")
    return [str(u) for u in ids]


def read_split(folder: Path | str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(H [rows, K, D] memory-mapped, present [rows] bool) of one split, with shape checks naming the file."""
    path = h_path(folder, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (write it with `scoter reason distill` or `scoter reason encode`)")
    h = np.load(path, mmap_mode="r")
    if h.ndim != 3:
        raise ValueError(f"{path}: expected [users, K, D], got shape {h.shape}")
    p_path = present_path(folder, split)
    present = np.load(p_path).astype(bool) if p_path.exists() else np.ones(len(h), bool)
    if present.shape != (len(h),):
        raise ValueError(f"{p_path}: expected [{len(h)}] flags, got shape {present.shape}")
    return h, present


def read_published_split(folder: Path | str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split with its user ids, for publishing (user_ids.json is required: the store is keyed by user)."""
    h, present = read_split(folder, split)
    ids = read_user_ids(folder)
    if ids is None:
        raise FileNotFoundError(f"{Path(folder) / USER_IDS} not found (write it with `scoter reason distill`)")
    if len(ids) != len(h):
        raise ValueError(f"{folder}: H_{split}.npy has {len(h)} rows, user_ids.json {len(ids)}")
    return h, present, ids


@dataclass
class ReasoningArrays:
    """Per-user H for each split ([n_users, K, D] float32, rows aligned with a dataset's user ids) and presence."""

    H: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    source: str
    train_fn: Callable[[Any], Any] | None = None  # H from a training prefix itself (a tensor in, a tensor out)
    # H per training example ([N_train, K, D], rows of LeaveOneOut.train_examples()), leak-free per prefix
    train_examples: np.ndarray | None = None

    @property
    def K(self) -> int:
        return int(self.H["test"].shape[1])

    @property
    def D(self) -> int:
        return int(self.H["test"].shape[2])

    def coverage(self) -> dict[str, float]:
        return {s: float(self.present[s].mean()) if len(self.present[s]) else 0.0 for s in SPLITS}


def _rows_for_users(folder: Path, stored: list[str] | None, user_ids: Sequence[str], n_rows: int) -> np.ndarray:
    """Row of each dataset user in the folder's files (-1 = not there). Uses user_ids.json when present, else
    assumes the files start with the dataset's users in order (Dataset.subset keeps the first N)."""
    if stored is not None:
        if len(stored) != n_rows:
            raise ValueError(f"{folder / USER_IDS}: {len(stored)} user ids but H files have {n_rows} rows")
        where = {u: i for i, u in enumerate(stored)}
        return np.array([where.get(str(u), -1) for u in user_ids], dtype=np.int64)
    if n_rows < len(user_ids):
        raise ValueError(f"{folder}: H files have {n_rows} rows for {len(user_ids)} users and no {USER_IDS}")
    return np.arange(len(user_ids), dtype=np.int64)


def read_aligned_split(folder: Path | str, split: str, user_ids: Sequence[str],
                       stored: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split as (H [n_users, K, D] float32, present [n_users]) in the order of `user_ids`; users the folder
    lacks are zero rows, not present. `stored` is the folder's user_ids.json when already read."""
    folder = Path(folder)
    stored = read_user_ids(folder) if stored is None else stored
    h, p = read_split(folder, split)
    rows = _rows_for_users(folder, stored, user_ids, len(h))
    found = rows >= 0
    out = np.zeros((len(user_ids), *h.shape[1:]), np.float32)
    out[found] = np.asarray(h[rows[found]], dtype=np.float32)
    present = np.zeros(len(user_ids), bool)
    present[found] = p[rows[found]]
    bad = present & ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"{h_path(folder, split)}: non-finite H for {int(bad.sum())} users marked present "
                         f"(first row {int(rows[np.argmax(bad)])})")
    return out, present


def load_reasoning(folder: Path | str, user_ids: Sequence[str], source: str | None = None) -> ReasoningArrays:
    """Every split of an H folder, aligned to `user_ids` (users the folder lacks are zero rows, not present)."""
    folder = Path(folder)
    stored = read_user_ids(folder)
    H: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for split in SPLITS:
        H[split], present[split] = read_aligned_split(folder, split, user_ids, stored)
        if H[split].shape[1:] != H["train"].shape[1:]:
            raise ValueError(f"{h_path(folder, split)}: K, D = {H[split].shape[1:]} differ from H_train's "
                             f"{H['train'].shape[1:]}")
    per_example = folder / TRAIN_EXAMPLES
    train_examples = None
    if per_example.exists():
        if stored is not None and stored[: len(user_ids)] != [str(u) for u in user_ids]:
            raise ValueError(f"{per_example}: rows follow {USER_IDS}, which does not start with this dataset's users")
        train_examples = np.load(per_example, mmap_mode="r")
        if train_examples.ndim != 3 or train_examples.shape[1:] != H["test"].shape[1:]:
            raise ValueError(f"{per_example}: expected [examples, {H['test'].shape[1]}, {H['test'].shape[2]}], "
                             f"got {train_examples.shape}")
    return ReasoningArrays(H, present, source or f"dir:{folder}", train_examples=train_examples)


def save_reasoning(folder: Path | str, arrays: ReasoningArrays, user_ids: Sequence[str]) -> None:
    """Write aligned arrays as an H folder that `load_reasoning` reads back unchanged."""
    for split in SPLITS:
        write_split(folder, split, arrays.H[split], arrays.present[split])
    write_user_ids(folder, user_ids)
    write_meta(folder, {"source": arrays.source, "K": arrays.K, "D": arrays.D})
