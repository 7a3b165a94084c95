"""Testing helper: a small, real model bundle for the service tests and benchmarks (torch-free; needs onnx).

The graph has Contract 1's inputs/outputs and does a real computation: score(item) = E[item] . (masked
mean of history embeddings + mean(reasoning) @ W when reasoning is present), top-`beam` via TopK. The
numpy twin `expected_topk` lets tests check the served ranking exactly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scoter.bundle import SCHEMA_VERSION, atomic_bundle_dir, finalize_manifest, write_items


@dataclass(frozen=True)
class TinyModel:
    emb: np.ndarray  # [n_items + 1, d], row 0 = padding (zeros)
    proj: np.ndarray  # [D, d]
    max_len: int
    beam: int

    def expected_topk(self, history: np.ndarray, reasoning: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Reference ranking for one user: (1-based item ids [beam], scores [beam])."""
        mask = history > 0
        u = self.emb[history[mask]].sum(0) / max(mask.sum(), 1)
        if reasoning is not None:
            u = u + reasoning.mean(0) @ self.proj
        scores = self.emb[1:] @ u
        order = np.argsort(-scores, kind="stable")[: self.beam]
        return order + 1, scores[order]


def item_ids(n_items: int) -> list[str]:
    return [f"I{i:05d}" for i in range(1, n_items + 1)]


def _graph(model: TinyModel, k: int, d_reason: int) -> onnx.ModelProto:
    init = [
        numpy_helper.from_array(model.emb.astype(np.float32), "E"),
        numpy_helper.from_array(np.ascontiguousarray(model.emb[1:].T.astype(np.float32)), "ET"),
        numpy_helper.from_array(model.proj.astype(np.float32), "W"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
        numpy_helper.from_array(np.array(1, np.int64), "one_i"),
        numpy_helper.from_array(np.array([model.beam], np.int64), "beam"),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "history"], ["h"]),
        helper.make_node("Cast", ["history_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "ax2"], ["mu"]),
        helper.make_node("Mul", ["h", "mu"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "ax1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["mf", "ax1"], ["cnt"], keepdims=1),
        helper.make_node("Max", ["cnt", "one_f"], ["cntc"]),
        helper.make_node("Div", ["s", "cntc"], ["u"]),
        helper.make_node("ReduceMean", ["reasoning"], ["r"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["r", "W"], ["rt"]),
        helper.make_node("Cast", ["reasoning_present"], ["p"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["p", "ax1"], ["pu"]),
        helper.make_node("Mul", ["rt", "pu"], ["rp"]),
        helper.make_node("Add", ["u", "rp"], ["u2"]),
        helper.make_node("MatMul", ["u2", "ET"], ["sc"]),
        helper.make_node("TopK", ["sc", "beam"], ["scores", "idx"], axis=-1, largest=1, sorted=1),
        helper.make_node("Add", ["idx", "one_i"], ["item_ids"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_scoter",
        [helper.make_tensor_value_info("history", TensorProto.INT64, ["batch", model.max_len]),
         helper.make_tensor_value_info("history_mask", TensorProto.BOOL, ["batch", model.max_len]),
         helper.make_tensor_value_info("reasoning", TensorProto.FLOAT, ["batch", k, d_reason]),
         helper.make_tensor_value_info("reasoning_present", TensorProto.BOOL, ["batch"])],
        [helper.make_tensor_value_info("item_ids", TensorProto.INT64, ["batch", model.beam]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", model.beam])],
        init)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="scoter-tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def build_bundle(out_dir: Path, *, n_items: int = 50, d: int = 16, k: int = 3, d_reason: int = 8,
                 max_len: int = 8, beam: int = 10, seed: int = 0, model_version: str = "1",
                 reasoning_version: str = "rv1", reasoning_scale: float = 3.0,
                 exclude_history: bool = False) -> TinyModel:
    """Write a verified bundle (manifest + checksums via scoter.bundle) and return its numpy twin."""
    rng = np.random.default_rng(seed)
    emb = np.vstack([np.zeros((1, d)), rng.normal(size=(n_items, d))]).astype(np.float32)
    proj = (reasoning_scale * rng.normal(size=(d_reason, d))).astype(np.float32)
    model = TinyModel(emb, proj, max_len, beam)
    with atomic_bundle_dir(Path(out_dir), overwrite=True) as tmp:
        onnx.save(_graph(model, k, d_reason), str(tmp / "model.onnx"))
        write_items(tmp / "items.json", item_ids(n_items))
        codes = np.zeros((n_items + 1, 2), np.int64)
        codes[1:, 0] = np.arange(n_items) % 4
        codes[1:, 1] = np.arange(n_items) // 4
        np.save(tmp / "codes.npy", codes)
        np.savez(tmp / "trie.npz", leaf_item=np.arange(1, n_items + 1, dtype=np.int64))
        finalize_manifest(tmp, {
            "schema_version": SCHEMA_VERSION, "model_id": "tiny-scoter", "model_version": model_version,
            "backbone": "tiny", "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "reasoning_version": reasoning_version, "reasoning_steps": k, "reasoning_dim": d_reason,
            "d_item": d, "code_length": 2, "codebook_sizes": [4, (n_items + 3) // 4], "n_items": n_items,
            "default_beam": beam, "max_history": max_len,
            "inputs": [{"name": "history", "dtype": "int64", "shape": ["batch", max_len]},
                       {"name": "history_mask", "dtype": "bool", "shape": ["batch", max_len]},
                       {"name": "reasoning", "dtype": "float32", "shape": ["batch", k, d_reason]},
                       {"name": "reasoning_present", "dtype": "bool", "shape": ["batch"]}],
            "outputs": [{"name": "item_ids", "dtype": "int64", "shape": ["batch", beam]},
                        {"name": "scores", "dtype": "float32", "shape": ["batch", beam]}],
            "graphs": {"fp32": "model.onnx"}, "export": {"exporter": "model_export/testing.py", "exclude_history": exclude_history},
        })
    return model
