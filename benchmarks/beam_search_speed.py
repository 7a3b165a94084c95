"""Constrained beam search throughput (users/s) for TIGER and HSTU at batch 1 and 64, beam 20, on the Beauty
trie, and the constraint's share of decoding time (same search with vs. without the trie mask, interleaved so
machine load hits both alike). Speed does not depend on training, so freshly initialised paper-size models are
used. Medians and minima over repeats are both recorded (on a shared machine the minimum is the cleaner one). Writes benchmarks/results/beam_search_speed.json.

    OMP_NUM_THREADS=1 python -m benchmarks.beam_search_speed [--codes PATH] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import ROOT, provenance, write_result
from offline.backbones import (
    HstuConfig,
    HstuModel,
    TigerConfig,
    TigerModel,
    TrieTensors,
    constrained_beam_search,
)
from offline.backbones.train import default_codes_path
from offline.data.splits import Splits
from offline.semantic_ids.codes import SemanticIds


def find_codes(explicit: Path | None) -> Path:
    """The real Beauty codes if built, else the fusion engineer's development codes."""
    candidates = [explicit] if explicit else [
        default_codes_path("beauty"),
        ROOT / "artifacts/beauty/fusion_dev/semantic_ids_rqkmeans.npz",
    ]
    for path in candidates:
        if path is not None and Path(path).exists():
            return Path(path)
    raise FileNotFoundError(f"no Beauty semantic IDs found (tried {candidates})")


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(model, trie, histories: np.ndarray, batch: int, beam: int, repeats: int, device) -> dict:
    """Median seconds per batch with and without the mask, over `repeats` distinct batches."""
    rng = np.random.default_rng(0)
    with_mask, without = [], []
    with torch.inference_mode():
        for r in range(repeats + 1):  # the first round warms up and is dropped
            rows = rng.choice(len(histories), size=batch, replace=False)
            h = torch.as_tensor(histories[rows]).to(device)
            a = timed(lambda h=h: constrained_beam_search(model, h, trie, beam=beam, constrain=True), device)
            b = timed(lambda h=h: constrained_beam_search(model, h, trie, beam=beam, constrain=False), device)
            if r:
                with_mask.append(a)
                without.append(b)
    t_mask, t_free = statistics.median(with_mask), statistics.median(without)
    # the minimum over repeats is the least disturbed by other processes on a shared machine
    b_mask, b_free = min(with_mask), min(without)
    return {
        "batch": batch,
        "users_per_s": batch / t_mask,
        "users_per_s_best": batch / b_mask,
        "ms_per_batch": 1000 * t_mask,
        "ms_per_batch_without_mask": 1000 * t_free,
        "constraint_share": (t_mask - t_free) / t_mask,
        "constraint_share_best": (b_mask - b_free) / b_mask,
        "repeats": repeats,
    }


def mask_ops_seconds(trie: TrieTensors, batch: int, beam: int, device, repeats: int = 30) -> float:
    """Best time of the constraint's own tensor ops for one search (per level: gather the children of every
    beam's node, mask the log-probs, gather the chosen children), on random live nodes. Less noisy than the
    difference of two whole searches on a loaded machine."""
    gen = torch.Generator().manual_seed(0)
    best = float("inf")
    with torch.inference_mode():
        inputs = []
        for pos in range(trie.levels):
            table = trie.table(pos)
            node = torch.randint(0, table.shape[0], (batch, beam), generator=gen).to(device)
            logp = torch.randn(batch, beam, table.shape[1], generator=gen).to(device)
            idx = torch.randint(0, beam * table.shape[1], (batch, beam), generator=gen).to(device)
            inputs.append((table, node, logp, idx))

        def run() -> None:
            for table, node, logp, idx in inputs:
                child = table[node]
                logp.masked_fill(child < 0, float("-inf"))
                child.reshape(batch, -1).gather(1, idx).clamp(min=0)

        run()
        for _ in range(repeats):
            best = min(best, timed(run, device))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codes", type=Path, default=None)
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/beam_search_speed.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    codes_path = find_codes(args.codes)
    sid = SemanticIds.load(codes_path)
    histories = Splits.load("beauty").test[0]
    results = []
    for name, model in (
        ("tiger", TigerModel(TigerConfig(), sid.codes, sid.codebook_sizes)),
        ("hstu", HstuModel(HstuConfig(), sid.codes, sid.codebook_sizes)),
    ):
        model = model.eval().to(device)
        trie = TrieTensors.for_model(model).to(device)
        for batch in args.batches:
            row = {"backbone": name, **measure(model, trie, histories, batch, args.beam, args.repeats, device)}
            ops = mask_ops_seconds(trie, batch, args.beam, device)
            row["mask_ops_ms"] = 1000 * ops
            row["mask_ops_share_of_best_search"] = ops / (batch / row["users_per_s_best"])
            print(json.dumps(row), flush=True)
            results.append(row)
    doc = {
        "benchmark": "beam_search_speed",
        **provenance(torch.cuda.get_device_name(device) if device.type == "cuda" else None),
        "platform": platform.platform(),
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "beam": args.beam,
        "codes": str(codes_path.relative_to(ROOT) if codes_path.is_relative_to(ROOT) else codes_path),
        "code_length": len(sid.codebook_sizes),
        "codebook_sizes": sid.codebook_sizes,
        "n_items": sid.n_items,
        "results": results,
    }
    write_result(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
