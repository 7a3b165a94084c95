"""Benchmark: SCoTER-T / SCoTER-H against their own backbones on Beauty, with H present and with H removed at
test time (cold start / store miss). Targets: +10% relative Recall@10 and NDCG@10 over the backbone with H;
no worse than -2% with H absent.

Each backbone run trains (or resumes) the plain backbone and the fused model with the same loop and budget under
artifacts/<dataset>/bench/<tag>/scoter-<bb>/ and writes benchmarks/results/<dataset>_scoter_<tag>.json.

    OMP_NUM_THREADS=1 python -m benchmarks.beauty_scoter --backbones hstu --max-users 2000 \
        --epochs 10 --reasoning artifacts/beauty/reasoning [--tag small]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS, write_result
from benchmarks.scoter_runs import add_args, run_config, run_provenance
from offline.fusion.experiments import baseline_dir, run_baseline_only, run_scoter
from scoter.paths import artifacts_root


def training_summary(run_dir: Path) -> dict[str, Any]:
    """From a run's log.jsonl: epochs, best epoch, median seconds per epoch (train / validation), the
    validation Recall@10 curve; what BENCHMARKS.md quotes next to the metrics."""
    log_path = run_dir / "log.jsonl"
    if not log_path.exists():
        return {}
    rows = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    full = [r for r in rows if not r.get("partial")]
    curve = [round(r["valid_subset"]["recall@10"], 4) for r in rows if "valid_subset" in r]
    best = max(range(len(curve)), key=curve.__getitem__) if curve else None
    return {"epochs": len(full), "partial_epoch_at_end": bool(rows and rows[-1].get("partial")),
            "best_epoch": rows[best]["epoch"] if best is not None else None,
            "best_valid_subset_recall@10": curve[best] if best is not None else None,
            "train_s_per_epoch_median": round(statistics.median(r["train_s"] for r in full), 1) if full else None,
            "eval_s_per_epoch_median": round(statistics.median(r["eval_s"] for r in full), 1) if full else None,
            "total_train_s": round(sum(r["train_s"] for r in rows), 1), "valid_subset_recall@10_curve": curve}


def targets(doc: dict[str, Any]) -> dict[str, bool]:
    """The issue's acceptance targets on the test split."""
    g, a = doc.get("gain_h_present", {}), doc.get("gain_h_absent", {})
    def at_least(d: dict[str, Any], key: str, bound: float) -> bool:
        return d.get(key) is not None and d[key] >= bound

    return {"recall@10_gain_ge_10pct": at_least(g, "recall@10", 0.10),
            "ndcg@10_gain_ge_10pct": at_least(g, "ndcg@10", 0.10),
            "h_absent_recall@10_ge_-2pct": at_least(a, "recall@10", -0.02),
            "h_absent_ndcg@10_ge_-2pct": at_least(a, "ndcg@10", -0.02)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--backbones", default="tiger,hstu", help="comma-separated: tiger,hstu")
    ap.add_argument("--stage", choices=["both", "baseline", "scoter", "combine"], default="both",
                    help="baseline / scoter: train one side only (e.g. in parallel processes); combine: read both "
                         "runs' final evaluations (no training) and write the results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    root = artifacts_root() / args.dataset / "bench" / args.tag
    out_path = RESULTS / f"{args.dataset}_scoter_{args.tag}.json"
    doc: dict[str, Any] = {"runs": {}}
    for bb in args.backbones.split(","):
        cfg = run_config(args, bb, root / f"scoter-{bb}")
        if args.stage == "baseline":
            res = {"backbone_test": run_baseline_only(cfg)["test"]}
        else:
            res = run_scoter(cfg, with_baseline=args.stage != "scoter", reuse_final=args.stage == "combine")
        keep = ("backbone_test", "scoter_test", "scoter_test_h_absent", "gain_h_present", "gain_h_absent",
                "reasoning_source", "epochs_trained")
        run = {**{k: res.get(k) for k in keep}, "targets": targets(res)}
        if args.stage in ("both", "combine"):
            run["training"] = {"backbone": training_summary(baseline_dir(cfg)), "scoter": training_summary(cfg.out_dir)}
            # the backbone's own result file (the issue's <dataset>_<backbone>.json), from this SCoTER run's baseline
            write_result(RESULTS / f"{args.dataset}_{bb}.json", {
                "model": bb, "tag": args.tag, "test": res.get("backbone_test"),
                "training": run["training"]["backbone"],
                "config": {"model": cfg.backbone_config, "train": cfg.train.model_dump()}, **run_provenance(args, started)})
        doc["runs"][f"scoter-{bb[0].upper()}"] = run
        doc.update(run_provenance(args, started))
        write_result(out_path, doc)  # after each backbone, so a later failure keeps the finished one
    print(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
