"""Export a ranking model (Contract 1 forward signature) to a verified, versioned ONNX bundle.

The whole trie-constrained beam search goes inside the graph: the code length is fixed, so the Python loop over
code positions unrolls at trace time and the trie tables become constant initializers. We use the dynamo-based
`torch.onnx.export(dynamo=True)` (torch.export + onnxscript), which handles the gathers/topk of the beam search
and gives a dynamic batch dimension. After export: onnx checker, an offline ORT graph optimisation at the
portable BASIC level (fusions above BASIC are provider-specific, so the service applies them at load), and an
fp16 variant with TopK and the score accumulation kept in fp32.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from pydantic import BaseModel, Field

from scoter.bundle import (
    SCHEMA_VERSION,
    Manifest,
    atomic_bundle_dir,
    finalize_manifest,
    sha256_file,
    write_items,
)
from scoter.io import describe_output, disk_usage, format_size

log = logging.getLogger(__name__)

INPUT_NAMES = ["history", "history_mask", "reasoning", "reasoning_present"]
OUTPUT_NAMES = ["item_ids", "scores"]
# Ops whose inputs stay fp32 in the fp16 graph: ranking (TopK) and the cumulative log-prob path, so fp16 only
# changes the network's activations, never how beams are compared.
FP16_BLOCKED_OPS = ["TopK", "LogSoftmax", "IsInf", "IsNaN", "CumSum", "Range", "Min", "Max"]


class ExportConfig(BaseModel):
    """How a model becomes a bundle."""

    model_id: str = Field("scoter", min_length=1)
    model_version: str = Field("0", min_length=1)
    reasoning_version: str = "none"
    opset: int = Field(18, ge=17)
    fp16: bool = True
    int8: bool = Field(True, description="also write a dynamically quantised (int8 MatMul weights) CPU graph")
    optimize: bool = True
    example_batch: int = Field(2, ge=2, description="trace batch; >1 so the batch dimension stays symbolic")
    overwrite: bool = False
    exclude_history: bool = Field(True, description="the graph never returns an item of the request's history; "
                                  "False for catalogues where repeat purchases are recommended")


@dataclass
class RankingSource:
    """A ranking nn.Module plus the tables and dimensions the manifest needs."""

    module: torch.nn.Module  # forward(history, history_mask, reasoning, reasoning_present) -> (item_ids, scores)
    backbone: str
    codes: np.ndarray  # [n_items + 1, L] int64, row 0 = padding
    codebook_sizes: list[int]
    item_ids: list[str]  # external ids, entry i-1 = item index i
    next_node: list[np.ndarray]
    leaf_item: np.ndarray
    reasoning_steps: int
    reasoning_dim: int
    d_item: int
    max_history: int
    beam: int
    provenance: dict[str, Any] = field(default_factory=dict)


def example_inputs(src: RankingSource, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random but valid inputs: left-padded histories, some users without reasoning."""
    gen = torch.Generator().manual_seed(seed)
    n_items = src.codes.shape[0] - 1
    history = torch.randint(1, n_items + 1, (batch, src.max_history), generator=gen)
    lengths = torch.randint(1, src.max_history + 1, (batch,), generator=gen)
    positions = torch.arange(src.max_history).unsqueeze(0)
    mask = positions >= (src.max_history - lengths).unsqueeze(1)
    history = history.masked_fill(~mask, 0)
    reasoning = torch.randn(batch, src.reasoning_steps, src.reasoning_dim, generator=gen)
    present = torch.arange(batch) % 2 == 0
    return history, mask, reasoning, present


def _sort_stable(self, stable: bool | None = None, dim: int = -1, descending: bool = False):
    """aten.sort.stable (no built-in ONNX translation) as a full-length TopK: ONNX TopK puts the lower index
    first among equal values, which is exactly a stable sort in either direction."""
    from onnxscript import opset18 as op

    length = op.Reshape(op.Gather(op.Shape(self), dim), op.Constant(value_ints=[1]))
    values, indices = op.TopK(self, length, axis=dim, largest=int(descending), sorted=1)
    return values, indices


def custom_translations() -> dict:
    return {torch.ops.aten.sort.stable: _sort_stable}


def export_onnx(src: RankingSource, path: Path, config: ExportConfig) -> dict[str, Any]:
    """Trace the module into `path` (dynamic batch and history length); returns export facts."""
    module = src.module.eval()
    inputs = example_inputs(src, config.example_batch)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    length = torch.export.Dim("history_len", min=1, max=src.max_history)
    dynamic = ({0: batch, 1: length}, {0: batch, 1: length}, {0: batch}, {0: batch})
    start = time.perf_counter()
    for noisy in ("onnxscript", "onnx_ir"):  # their INFO lines drown the progress log
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log.info("tracing %s with torch.export (dynamic batch, history length 1..%d)", src.backbone, src.max_history)
    with torch.no_grad():
        program = torch.onnx.export(
            module, inputs, dynamo=True, dynamic_shapes=dynamic, opset_version=config.opset,
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, verbose=False, report=False,
            custom_translation_table=custom_translations(),
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    seconds = time.perf_counter() - start
    log.info("exported %s (%s) in %.1f s", path.name, format_size(disk_usage(path)[0]), seconds)
    return {"exporter": "torch.onnx.export(dynamo=True)", "opset": config.opset, "export_seconds": round(seconds, 2)}


def optimize_onnx(src_path: Path, dst_path: Path) -> None:
    """Apply ORT's provider-independent (BASIC) rewrites offline: constant folding, redundant node removal."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst_path)
    ort.InferenceSession(str(src_path), sess_options=opts, providers=["CPUExecutionProvider"])
    onnx.checker.check_model(str(dst_path), full_check=True)


def convert_fp16(src_path: Path, dst_path: Path) -> None:
    """fp16 weights and activations, fp32 graph inputs/outputs, TopK and log-softmax kept in fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src_path))
    half = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=FP16_BLOCKED_OPS, node_block_list=score_path_nodes(model)
    )
    half = _topological_sort(half)  # the converter appends its input casts at the end of the node list
    # the converter can leave an fp32 type on a tensor it turned fp16 (seen when a LogSoftmax output feeds TopK
    # through a Reshape only): drop the intermediate type annotations and infer them afresh
    del half.graph.value_info[:]
    half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    onnx.checker.check_model(half, full_check=True)
    onnx.save(half, str(dst_path))


def score_path_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of nodes fed (through float tensors) by a LogSoftmax: the beam score accumulation and ranking.

    Keeping them in fp32 means fp16 changes only the network's activations, not how beams add up and compare.
    Propagation stops at integer tensors (TopK indices), so the next decoder step stays fp16.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    floats = {
        vi.name for vi in [*graph.value_info, *graph.input, *graph.output]
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [out for node in graph.node if node.op_type == "LogSoftmax" for out in node.output]
    blocked: set[str] = set()
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name in blocked:
                continue
            blocked.add(node.name)
            frontier.extend(out for out in node.output if out in floats)
    return sorted(blocked)


def convert_int8(src_path: Path, dst_path: Path) -> None:
    """Dynamic int8 quantisation of MatMul weights: the CPU variant (most of the beam search time is MatMul).
    Rankings differ from fp32 by near-tie reorderings; `scoter export verify` reports by how much."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src_path), str(dst_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    onnx.checker.check_model(str(dst_path), full_check=True)


def _topological_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass

    ir_model = ir.serde.deserialize_model(model)
    TopologicalSortPass()(ir_model)
    return ir.serde.serialize_model(ir_model)


def manifest_fields(src: RankingSource, config: ExportConfig, graphs: dict[str, str], facts: dict) -> dict:
    """Everything in the manifest except the file hashes (added by `finalize_manifest`)."""
    k, d = src.reasoning_steps, src.reasoning_dim
    return {
        "schema_version": SCHEMA_VERSION,
        "model_id": config.model_id,
        "model_version": config.model_version,
        "backbone": src.backbone,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reasoning_version": config.reasoning_version,
        "reasoning_steps": k,
        "reasoning_dim": d,
        "d_item": src.d_item,
        "code_length": len(src.codebook_sizes),
        "codebook_sizes": list(src.codebook_sizes),
        "n_items": int(src.codes.shape[0] - 1),
        "default_beam": src.beam,
        "max_history": src.max_history,
        "inputs": [
            {"name": "history", "dtype": "int64", "shape": ["batch", "history_len"]},
            {"name": "history_mask", "dtype": "bool", "shape": ["batch", "history_len"]},
            {"name": "reasoning", "dtype": "float32", "shape": ["batch", k, d]},
            {"name": "reasoning_present", "dtype": "bool", "shape": ["batch"]},
        ],
        "outputs": [
            {"name": "item_ids", "dtype": "int64", "shape": ["batch", src.beam]},
            {"name": "scores", "dtype": "float32", "shape": ["batch", src.beam]},
        ],
        "graphs": graphs,
        "files": {},
        "export": {
            **facts,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "tie_break": "equal scores: lower flat (beam, code) index first (ONNX TopK rule)",
            **src.provenance,
        },
    }


def check_source(src: RankingSource) -> None:
    """Refuse inconsistent inputs before spending a minute on tracing."""
    n_items = src.codes.shape[0] - 1
    if src.codes.ndim != 2 or src.codes.shape[1] != len(src.codebook_sizes):
        raise ValueError(f"codes: shape {src.codes.shape} does not match codebook_sizes {src.codebook_sizes}")
    if len(src.item_ids) != n_items:
        raise ValueError(f"item_ids: {len(src.item_ids)} ids for {n_items} items in codes")
    if len(src.next_node) != len(src.codebook_sizes):
        raise ValueError(f"next_node: {len(src.next_node)} levels for code length {len(src.codebook_sizes)}")
    if src.beam < 1 or src.max_history < 1:
        raise ValueError("beam and max_history must be positive")


def export_bundle(src: RankingSource, out_dir: str | Path, config: ExportConfig | None = None) -> Manifest:
    """Write a complete bundle atomically to `out_dir` and return its manifest."""
    config = config or ExportConfig()
    check_source(src)
    if hasattr(src.module, "exclude_history"):  # a RankingModule: the rule is traced into the graph
        src.module.exclude_history = config.exclude_history
    with atomic_bundle_dir(Path(out_dir), overwrite=config.overwrite) as tmp:
        raw = tmp / ".model.raw.onnx"  # dot-files are not part of the bundle
        facts = export_onnx(src, raw, config)
        facts["exclude_history"] = bool(getattr(src.module, "exclude_history", False))
        if config.optimize:
            optimize_onnx(raw, tmp / "model.onnx")
            facts["ort_offline_optimization"] = "ORT_ENABLE_BASIC"
        else:
            raw.rename(tmp / "model.onnx")
        raw.unlink(missing_ok=True)
        graphs = {"fp32": "model.onnx"}
        if config.fp16:
            convert_fp16(tmp / "model.onnx", tmp / "model.fp16.onnx")
            graphs["fp16"] = "model.fp16.onnx"
            facts["fp16_blocked_ops"] = FP16_BLOCKED_OPS
        if config.int8:
            convert_int8(tmp / "model.onnx", tmp / "model.int8.onnx")
            graphs["int8"] = "model.int8.onnx"
        write_items(tmp / "items.json", src.item_ids)
        np.save(tmp / "codes.npy", np.ascontiguousarray(src.codes, dtype=np.int64))
        trie = {f"next_node_{i}": np.asarray(t, dtype=np.int64) for i, t in enumerate(src.next_node)}
        np.savez(tmp / "trie.npz", leaf_item=np.asarray(src.leaf_item, dtype=np.int64), **trie)
        for leftover in tmp.glob(".*"):
            leftover.unlink()
        manifest = finalize_manifest(tmp, manifest_fields(src, config, graphs, facts))
    log.info("bundle %s v%s: wrote %s (%s)", manifest.model_id, manifest.model_version, describe_output(out_dir),
             ", ".join(f"{name} {format_size(disk_usage(Path(out_dir) / name)[0])}" for name in graphs.values()))
    return manifest


def checkpoint_provenance(path: Path) -> dict[str, str]:
    return {"checkpoint": str(Path(path).resolve()), "checkpoint_sha256": sha256_file(Path(path))}
