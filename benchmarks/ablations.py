"""Benchmark: the paper's fusion ablations (Table 4 on HSTU, Table 10 on TIGER) and H from each reasoning
source, each as its own resumable training run sharing one plain-backbone baseline.

Switches: full, no_position, no_contrastive, no_position_no_contrastive, single_vector (one embedding for the
whole chain), mean (mean pooling of steps), last (last step only). Sources: --source NAME=DIR (repeatable; e.g.
student=artifacts/beauty/reasoning teacher=... untuned=...).
Writes benchmarks/results/<dataset>_ablations_<backbone>_<tag>.json.

    OMP_NUM_THREADS=1 python -m benchmarks.ablations --backbone hstu --max-users 2000 --epochs 10 \
        --reasoning DIR [--only full,no_position] [--source student=DIR --source teacher=DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS, write_result
from benchmarks.scoter_runs import add_args, run_config, run_provenance
from offline.fusion.experiments import baseline_dir, relative, run_scoter
from offline.fusion.model import ABLATIONS
from scoter.paths import artifacts_root


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    return {"test": res["scoter_test"], "test_h_absent": res["scoter_test_h_absent"],
            "gain_over_backbone": res.get("gain_h_present"), "reasoning_source": res["reasoning_source"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--backbone", choices=["tiger", "hstu"], default="hstu")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ABLATIONS)}")
    ap.add_argument("--source", action="append", default=[], help="NAME=DIR: an H folder to compare")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(ABLATIONS)
    bad = [n for n in names if n not in ABLATIONS]
    if bad:
        ap.error(f"--only: unknown {bad}; choose from {sorted(ABLATIONS)}")
    started = time.perf_counter()
    root = artifacts_root() / args.dataset / "bench" / args.tag / f"ablations-{args.backbone}"
    base_cfg = run_config(args, args.backbone, root)
    shared_baseline = baseline_dir(base_cfg)
    out_path = RESULTS / f"{args.dataset}_ablations_{args.backbone}_{args.tag}.json"
    doc: dict[str, Any] = {"backbone": args.backbone, "ablations": {}, "sources": {}}
    for name in names:
        res = run_scoter(base_cfg.model_copy(update={"ablation": name, "out_dir": root / f"ablation-{name}",
                                                     "baseline_dir": shared_baseline}))
        doc["backbone_test"] = res.get("backbone_test")
        doc["ablations"][name] = _summary(res)
        doc.update(run_provenance(args, started))
        write_result(out_path, doc)
    for spec in args.source:
        label, _, folder = spec.partition("=")
        if not label or not folder:
            ap.error(f"--source: expected NAME=DIR, got {spec!r}")
        res = run_scoter(base_cfg.model_copy(update={"reasoning_dir": Path(folder),
                                                     "out_dir": root / f"source-{label}",
                                                     "baseline_dir": shared_baseline}))
        doc["backbone_test"] = res.get("backbone_test")
        doc["sources"][label] = _summary(res)
        doc.update(run_provenance(args, started))
        write_result(out_path, doc)
    full = doc["ablations"].get("full")
    if full:  # drop of each switch relative to the full model, as the paper's tables print it
        doc["relative_to_full"] = {n: relative(r["test"], full["test"]) for n, r in doc["ablations"].items()}
        write_result(out_path, doc)
    print(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
