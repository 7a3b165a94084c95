"""Serving wrapper over the torch-free bundle runner (`scoter.ranker.BundleRanker`, Contract 1).

The runner verifies the bundle (manifest, checksums, tables) and owns the ONNX Runtime session; this
module adds what the service needs on top: thread counts and providers from settings, warm-up timing,
and the bundle facts (T, K, D, beam, item index) the request path uses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scoter.bundle import BundleError
from scoter.ranker import BundleRanker, RankerConfig

log = logging.getLogger(__name__)

__all__ = ["Bundle", "BundleError", "load_bundle"]


@dataclass
class Bundle:
    """A loaded bundle with the facts the request path needs."""

    path: Path
    ranker: BundleRanker
    item_index: dict[str, int] = field(default_factory=dict)  # external id -> 1-based index

    @property
    def manifest(self):
        return self.ranker.manifest

    @property
    def items(self) -> list[str]:
        return self.ranker.items

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def reasoning_version(self) -> str:
        return self.manifest.reasoning_version

    @property
    def max_len(self) -> int:
        return self.manifest.max_history

    @property
    def k(self) -> int:
        return self.manifest.reasoning_steps

    @property
    def d(self) -> int:
        return self.manifest.reasoning_dim

    @property
    def beam(self) -> int:
        return self.manifest.default_beam

    @property
    def provider(self) -> str:
        return self.ranker.provider

    def run(self, history: np.ndarray, mask: np.ndarray, reasoning: np.ndarray,
            present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One ONNX Runtime call for a whole batch (blocking: call it from a worker thread)."""
        return self.ranker.rank(history, mask, reasoning, present)

    def warmup(self, runs: int, max_batch: int) -> float:
        """Dummy batches (size 1 and the largest micro-batch) before readiness; returns seconds spent."""
        t0 = time.perf_counter()
        for _ in range(runs):
            self.ranker.warmup(batch_sizes=tuple(sorted({1, max_batch})))
        return time.perf_counter() - t0


def load_bundle(path: Path, *, providers: list[str] | None = None, intra_op_threads: int = 1,
                inter_op_threads: int = 1) -> Bundle:
    """Verify and open a bundle; raises BundleError (a ValueError) naming what is wrong."""
    ranker = BundleRanker(path, RankerConfig(providers=providers, intra_op_threads=intra_op_threads,
                                             inter_op_threads=inter_op_threads))
    bundle = Bundle(path=Path(path), ranker=ranker,
                    item_index={item: i + 1 for i, item in enumerate(ranker.items)})
    log.info("bundle %s: %s %s on %s (T=%d K=%d D=%d beam=%d items=%d)", path, bundle.model_id,
             bundle.model_version, bundle.provider, bundle.max_len, bundle.k, bundle.d, bundle.beam,
             len(bundle.items))
    return bundle
