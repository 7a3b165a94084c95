"""Reusable training plumbing: seeding, atomic checkpoints, early stopping, and progress logging with rate and
ETA. Any model's training loop can use these so runs are reproducible and resumable the same way."""

from __future__ import annotations

import logging
import pathlib
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoter.io import atomic_write

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = [
    "EarlyStopping",
    "EpochTimer",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so a run is repeatable on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states to store in a checkpoint, so a resumed run continues the same random stream."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def resolve_device(name: str) -> torch.device:
    """`auto` = CUDA when present, else CPU; a CUDA device asked for on a machine without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return torch.device(name)


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


# What our checkpoints hold besides tensors and plain containers: numpy's RNG state (an ndarray, pickled under
# numpy 2's and numpy 1's module names) and the paths in config dumps. Nothing else is unpickled.
CHECKPOINT_GLOBALS: list[Any] = [
    np.dtype,
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__),  # dtype classes (the RNG state's is uint32)
    np.ndarray,
    (_np_reconstruct, "numpy._core.multiarray._reconstruct"),
    (_np_reconstruct, "numpy.core.multiarray._reconstruct"),
    pathlib.PosixPath,
]


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint (CPU tensors) with `weights_only=True`: a file from elsewhere cannot run code; the
    globals our own checkpoints need are allow-listed in CHECKPOINT_GLOBALS."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ValueError(f"{path}: refused, it holds more than tensors and plain data ({reason})") from exc


@dataclass
class EarlyStopping:
    """Stop when the monitored metric (higher is better) has not improved for `patience` epochs."""

    patience: int
    best: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record this epoch's metric; True if it is a new best."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


class EpochTimer:
    """Logs one line per epoch with examples/s and an ETA for the remaining epochs (an upper bound when early
    stopping ends the run sooner)."""

    def __init__(self, total_epochs: int, start_epoch: int = 0, deadline: float | None = None) -> None:
        self.total = total_epochs
        self.start_epoch = start_epoch
        self.deadline = deadline  # time.perf_counter() at which a time budget ends the run
        self.t0 = time.perf_counter()
        self.epoch_t0 = self.t0

    def start(self) -> None:
        self.epoch_t0 = time.perf_counter()

    def end(self, epoch: int, n_examples: int, **metrics: float) -> float:
        now = time.perf_counter()
        took = now - self.epoch_t0
        done = epoch + 1 - self.start_epoch
        per_epoch = (now - self.t0) / max(done, 1)
        eta = per_epoch * (self.total - epoch - 1)
        if self.deadline is not None:  # the budget ends the run first when it is the nearer bound
            eta = min(eta, max(self.deadline - now, 0.0))
        extra = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        log.info(
            "epoch %d/%d %.1fs (%.0f ex/s) %s | ETA %.1f min (max)",
            epoch + 1,
            self.total,
            took,
            n_examples / max(took, 1e-9),
            extra,
            eta / 60,
        )
        return took
