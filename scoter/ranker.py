"""Torch-free runner for a verified bundle: checks inputs, then ranks a batch in one ONNX Runtime run.

Used by the service and by `scoter export verify`. Inputs are checked here (shape, dtype, range) so a bad
request fails with a message naming the input instead of an opaque ONNX Runtime error. `open_bundle` gives the
service's view: the runner plus the bundle facts (T, K, D, beam, item index) its request path reads, and a
warm-up before readiness.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from scoter.bundle import Manifest, load_bundle, load_items

log = logging.getLogger(__name__)

INPUT_DTYPES = {
    "history": np.dtype(np.int64),
    "history_mask": np.dtype(np.bool_),
    "reasoning": np.dtype(np.float32),
    "reasoning_present": np.dtype(np.bool_),
}


class InputError(ValueError):
    """A ranking input with the wrong type, shape, dtype or values; the message names the input."""


class RankerConfig(BaseModel):
    """ONNX Runtime session settings for one bundle."""

    variant: Literal["fp32", "fp16", "int8"] = Field("fp32", description="fp16 for GPUs, int8 for CPUs")
    intra_op_threads: int = Field(default=0, ge=0, description="0 = ONNX Runtime's default (all cores)")
    inter_op_threads: int = Field(default=1, ge=0)
    providers: list[str] | None = Field(default=None, description="None: CUDA if available, else CPU")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    verify_checksums: bool = True


def choose_providers(requested: list[str] | None) -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always last as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(f"providers: {missing} not available in this onnxruntime (has {available})")
        return list(requested)
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available]


class BundleRanker:
    """One ONNX Runtime session over one verified bundle."""

    def __init__(self, bundle_dir: str | Path, config: RankerConfig | None = None) -> None:
        import onnxruntime as ort

        self.config = config or RankerConfig()
        self.manifest, self.bundle_dir = load_bundle(bundle_dir, verify_checksums=self.config.verify_checksums)
        if self.config.variant not in self.manifest.graphs:
            raise ValueError(f"variant: bundle has no {self.config.variant!r} graph (has {list(self.manifest.graphs)})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.intra_op_threads
        opts.inter_op_num_threads = self.config.inter_op_threads
        providers = choose_providers(self.config.providers)
        level = self.config.graph_optimization
        if level == "all" and self.config.variant == "fp16" and providers[0] == "CPUExecutionProvider":
            # ORT's CPU layout rewrites (the level above "extended") crash the process on the item-aware head's
            # fp16 graph (scatter-add over item masses); fp16 is the GPU variant, so CPU keeps the safe level
            log.warning("fp16 graph on the CPU provider: graph optimisation capped at 'extended'")
            level = "extended"
        self.graph_optimization = level  # the level the session was built with
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        graph = self.bundle_dir / self.manifest.graphs[self.config.variant]
        self.session = ort.InferenceSession(str(graph), sess_options=opts, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.items = load_items(self.bundle_dir)
        self.output_names = [spec.name for spec in self.manifest.outputs]
        log.info("loaded %s v%s (%s) on %s", self.manifest.model_id, self.manifest.model_version,
                 self.config.variant, self.provider)

    def validate(self, history, history_mask, reasoning, reasoning_present) -> dict[str, np.ndarray]:
        return validate_inputs(self.manifest, history, history_mask, reasoning, reasoning_present)

    def rank(self, history, history_mask, reasoning, reasoning_present) -> tuple[np.ndarray, np.ndarray]:
        """(item_ids int64 [B, beam], scores float32 [B, beam]); item 0 fills slots with no valid item."""
        feeds = self.validate(history, history_mask, reasoning, reasoning_present)
        item_ids, scores = self.session.run(self.output_names, feeds)
        return item_ids, scores.astype(np.float32, copy=False)

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run dummy batches so the first request does not pay for lazy initialisation."""
        m = self.manifest
        for b in batch_sizes:
            self.rank(
                np.ones((b, m.max_history), dtype=np.int64),
                np.ones((b, m.max_history), dtype=bool),
                np.zeros((b, m.reasoning_steps, m.reasoning_dim), dtype=np.float32),
                np.zeros(b, dtype=bool),
            )

    def external_ids(self, item_ids: np.ndarray) -> list[list[str]]:
        """Map 1-based item indices to external ids, dropping padding (0)."""
        return [[self.items[i - 1] for i in row if i > 0] for row in item_ids.tolist()]


def _check(name: str, value, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {type(value).__name__}")
    if value.dtype != INPUT_DTYPES[name]:
        raise InputError(f"{name}: dtype must be {INPUT_DTYPES[name]}, got {value.dtype}")
    if value.ndim != ndim:
        raise InputError(f"{name}: expected {ndim} dimensions, got shape {value.shape}")
    return value


def validate_inputs(manifest: Manifest, history, history_mask, reasoning, reasoning_present) -> dict[str, np.ndarray]:
    """Check every input against the manifest; return the ONNX Runtime feed dict (contiguous arrays)."""
    history = _check("history", history, 2)
    history_mask = _check("history_mask", history_mask, 2)
    reasoning = _check("reasoning", reasoning, 3)
    reasoning_present = _check("reasoning_present", reasoning_present, 1)
    batch, length = history.shape
    if batch < 1:
        raise InputError("history: batch must hold at least one user")
    if not 1 <= length <= manifest.max_history:
        raise InputError(f"history: length {length} outside 1..max_history={manifest.max_history}")
    if history_mask.shape != history.shape:
        raise InputError(f"history_mask: shape {history_mask.shape} != history shape {history.shape}")
    expected = (batch, manifest.reasoning_steps, manifest.reasoning_dim)
    if reasoning.shape != expected:
        raise InputError(f"reasoning: shape {reasoning.shape} != (batch, K, D) = {expected}")
    if reasoning_present.shape != (batch,):
        raise InputError(f"reasoning_present: shape {reasoning_present.shape} != (batch,) = ({batch},)")
    low, high = int(history.min()), int(history.max())
    if low < 0 or high > manifest.n_items:
        raise InputError(f"history: item indices must lie in 0..n_items={manifest.n_items}, got {low}..{high}")
    if not np.isfinite(reasoning).all():
        raise InputError("reasoning: contains NaN or infinite values")
    return {
        "history": np.ascontiguousarray(history),
        "history_mask": np.ascontiguousarray(history_mask),
        "reasoning": np.ascontiguousarray(reasoning),
        "reasoning_present": np.ascontiguousarray(reasoning_present),
    }


@dataclass
class ServingBundle:
    """A verified, opened bundle with the facts the service's request path reads."""

    path: Path
    ranker: BundleRanker
    item_index: dict[str, int] = field(default_factory=dict)  # external id -> 1-based index

    @property
    def manifest(self) -> Manifest:
        return self.ranker.manifest

    @property
    def items(self) -> list[str]:
        return self.ranker.items

    @property
    def excludes_history(self) -> bool:
        """The graph itself never returns an item of the request's history (`scoter export` default)."""
        return bool(self.manifest.export.get("exclude_history", False))

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


def open_bundle(path: str | Path, *, providers: list[str] | None = None, intra_op_threads: int = 1,
                inter_op_threads: int = 1) -> ServingBundle:
    """Verify and open a bundle for serving; raises BundleError (a ValueError) naming what is wrong."""
    ranker = BundleRanker(path, RankerConfig(providers=providers, intra_op_threads=intra_op_threads,
                                             inter_op_threads=inter_op_threads))
    bundle = ServingBundle(path=Path(path), ranker=ranker,
                           item_index={item: i + 1 for i, item in enumerate(ranker.items)})
    log.info("bundle %s: %s %s on %s (T=%d K=%d D=%d beam=%d items=%d)", path, bundle.model_id,
             bundle.model_version, bundle.provider, bundle.max_len, bundle.k, bundle.d, bundle.beam,
             len(bundle.items))
    return bundle
