"""Benchmark: where SCoTER helps (paper Fig. 4) and how sensitive it is to lambda (paper Fig. 5).

1. Relative gain of SCoTER over its backbone per user-length group and per target-item popularity quartile
   (group 0 = sparsest), read from a finished `benchmarks.beauty_scoter` / `scoter train scoter` run folder's
   comparison.json -> PNG + JSON.
2. The contrastive weight sweep lambda in {0.02, 0.05, 0.1, 0.2, 0.5}: one SCoTER run each (shared baseline).

    OMP_NUM_THREADS=1 python -m benchmarks.robustness --backbone hstu --max-users 2000 --epochs 10 \
        [--run artifacts/beauty/bench/default/scoter-hstu] [--lambdas 0.02,0.05,0.1,0.2,0.5] [--no-sweep]
Writes benchmarks/results/<dataset>_robustness_<backbone>_<tag>.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.harness import RESULTS, write_result  # noqa: E402
from benchmarks.scoter_runs import add_args, run_config, run_provenance  # noqa: E402
from offline.fusion.experiments import baseline_dir, run_scoter  # noqa: E402
from scoter.io import atomic_write  # noqa: E402
from scoter.paths import artifacts_root  # noqa: E402

GROUPS = ("user_length", "item_popularity")


def subgroup_gains(comparison: dict[str, Any], metric: str = "recall@10") -> dict[str, dict[str, Any]]:
    """Per group: backbone and SCoTER metric, relative gain, group size (from a comparison.json's metrics)."""
    m = comparison["metrics"] if "metrics" in comparison else comparison
    out: dict[str, dict[str, Any]] = {}
    for kind in GROUPS:
        out[kind] = {}
        for g, sc in m["scoter_test_subgroups"][kind].items():
            bb = m["backbone_test_subgroups"][kind][g]
            if not sc.get("n"):
                continue
            base, new = bb[metric], sc[metric]
            out[kind][g] = {"n": sc["n"], "backbone": base, "scoter": new,
                            "gain": (new - base) / base if base else None}
    return out


def plot(gains: dict[str, dict[str, dict[str, Any]]], sweep: dict[str, Any] | None, path: Path, title: str) -> None:
    panels = 3 if sweep else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    for ax, kind in zip(axes, GROUPS, strict=False):
        groups = sorted(gains[kind], key=int)
        vals = [100 * (gains[kind][g]["gain"] or 0.0) for g in groups]
        ax.bar([f"G{g}\n(n={gains[kind][g]['n']})" for g in groups], vals, color="#4C72B0")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{kind.replace('_', ' ')} groups")
        ax.set_ylabel("relative Recall@10 gain (%)")
    if sweep:
        lams = sorted(sweep, key=float)
        for metric in ("recall@10", "ndcg@10"):
            axes[2].plot([float(x) for x in lams], [sweep[x]["test"][metric] for x in lams], marker="o", label=metric)
        axes[2].set_xscale("log")
        axes[2].set_xticks([float(x) for x in lams], labels=lams)
        axes[2].minorticks_off()
        axes[2].set_xlabel("lambda (InfoNCE weight)")
        axes[2].set_title("lambda sweep (test)")
        axes[2].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--backbone", choices=["tiger", "hstu"], default="hstu")
    ap.add_argument("--run", type=Path, default=None,
                    help="finished SCoTER run folder with comparison.json (default: run it here)")
    ap.add_argument("--lambdas", default="0.02,0.05,0.1,0.2,0.5")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    root = artifacts_root() / args.dataset / "bench" / args.tag
    base_cfg = run_config(args, args.backbone, root / f"scoter-{args.backbone}")
    if args.run is not None:
        path = args.run / "comparison.json"
        if not path.exists():
            raise FileNotFoundError(f"--run: {path} not found (finish a `beauty_scoter.py` run first)")
        comparison = json.loads(path.read_text())
    else:
        comparison = {"metrics": run_scoter(base_cfg)}
    doc: dict[str, Any] = {"backbone": args.backbone, "reasoning_source": comparison["metrics"]["reasoning_source"],
                           "subgroup_gain_recall@10": subgroup_gains(comparison),
                           "subgroup_gain_ndcg@10": subgroup_gains(comparison, "ndcg@10")}
    stem = f"{args.dataset}_robustness_{args.backbone}_{args.tag}"
    sweep: dict[str, Any] = {}
    if not args.no_sweep:
        for lam in args.lambdas.split(","):
            cfg = base_cfg.model_copy(update={
                "fusion": {**base_cfg.fusion, "contrastive_weight": float(lam)},
                "out_dir": root / f"lambda-{args.backbone}-{lam}", "baseline_dir": baseline_dir(base_cfg)})
            res = run_scoter(cfg)
            sweep[lam] = {"test": res["scoter_test"], "gain": res.get("gain_h_present")}
            doc["lambda_sweep"] = sweep
            doc.update(run_provenance(args, started))
            write_result(RESULTS / f"{stem}.json", doc)
    doc.update(run_provenance(args, started))
    write_result(RESULTS / f"{stem}.json", doc)
    plot(doc["subgroup_gain_recall@10"], sweep or None, RESULTS / f"{stem}.png",
         f"SCoTER-{args.backbone[0].upper()} vs {args.backbone.upper()} on {args.dataset} "
         f"(H: {doc['reasoning_source'][:60]})")
    print(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
