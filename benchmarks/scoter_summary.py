"""SCoTER's results in the layout the roadmap asks for, gathered from benchmarks.teacher_curve runs (one JSON per
seed, each with a `baseline` point and real-H points that share its starting weights and training budget):

  beauty_scoter.json           backbone vs SCoTER per seed (H present and H removed at test), paired differences
  beauty_ablations.json        every other point of the first run: fusion switches and reasoning sources
  beauty_scoter_robustness.png relative gain per user-length and target-popularity quartile (paper Fig. 4)
  beauty_scoter_lambda.png     relative gain against the contrastive weight (paper Fig. 5)

    python -m benchmarks.scoter_summary --run benchmarks/results/beauty_scoter_runs_seed0.json \\
        --run benchmarks/results/beauty_scoter_runs_seed1.json --point h:real

A point named `<point>.lambda<x>` (e.g. h:real.lambda0.02) is a lambda-sweep point; the main point itself is the
default lambda.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, provenance, write_result
from benchmarks.teacher_curve import draw_gains
from offline.fusion.model import FusionConfig

METRICS = ("recall@10", "ndcg@10")


def fusion_changes(fusion: dict[str, Any]) -> dict[str, Any]:
    """The fields a point's fusion config sets away from the SASRec-SID run's defaults."""
    ref = FusionConfig(reasoning_dim=fusion["reasoning_dim"], d_item=fusion["d_item"], heads=fusion["heads"])
    return {k: v for k, v in fusion.items() if ref.model_dump(mode="json").get(k) != v and k != "vote_items"}


def seed_row(doc: dict[str, Any], point: str) -> dict[str, Any]:
    p = doc["points"][point]
    return {"seed": doc["protocol"]["train"]["seed"], "backbone_test": doc["points"]["baseline"]["test"],
            "scoter_test": p["test"], "scoter_test_h_absent": p["test_h_absent"], "paired": p["vs_baseline"],
            "paired_h_absent": p["h_absent_vs_baseline"], "by_group": p["vs_baseline_by_group"],
            "scoter_test_no_vote": p.get("test_no_vote"), "paired_no_vote": p.get("no_vote_vs_baseline"),
            "vote_weight": p.get("vote_weight"),
            "epochs": p["epochs"], "seconds": {"backbone": doc["points"]["baseline"]["seconds"],
                                               "scoter": p["seconds"]}}


def summary(docs: list[dict[str, Any]], point: str) -> dict[str, Any]:
    rows = [seed_row(d, point) for d in docs]
    gain = {m: float(np.mean([r["paired"][m]["relative"] for r in rows])) for m in METRICS}
    gain_absent = {m: float(np.mean([r["paired_h_absent"][m]["relative"] for r in rows])) for m in METRICS}
    above = {m: all(r["paired"][m]["diff"] > 2 * r["paired"][m]["se"] for r in rows) for m in METRICS}
    return {
        "label": docs[0]["label"], **provenance(), "runs": [d.get("command") for d in docs],
        "protocol": docs[0]["protocol"], "point": point, "h_source": docs[0]["points"][point]["reasoning"],
        "fusion": docs[0]["points"][point]["fusion"], "seeds": rows,
        "relative_gain_mean_over_seeds": gain, "relative_gain_h_absent_mean_over_seeds": gain_absent,
        "targets": {"recall@10_gain_ge_10pct": gain["recall@10"] >= 0.10,
                    "ndcg@10_gain_ge_10pct": gain["ndcg@10"] >= 0.10,
                    "paired_diff_above_2se_every_seed": above,
                    "h_absent_no_worse_than_1pct": all(v >= -0.01 for v in gain_absent.values()),
                    "moonshot_recall@10_ge_0.1187": all(r["scoter_test"]["recall@10"] >= 0.1187 for r in rows)},
    }


def ablations(doc: dict[str, Any], point: str) -> dict[str, Any]:
    out = {}
    for name, p in sorted(doc["points"].items()):
        if name == "baseline" or "vs_baseline" not in p:
            continue
        src = p.get("reasoning", {}).get("source", {})
        out[name] = {"fusion_changes": fusion_changes(p["fusion"]),
                     "reasoning_source": src.get("source") if isinstance(src, dict) else src,
                     "test": p["test"], "test_h_absent": p["test_h_absent"], "vs_baseline": p["vs_baseline"],
                     "h_absent_vs_baseline": p["h_absent_vs_baseline"],
                     "test_no_vote": p.get("test_no_vote"), "no_vote_vs_baseline": p.get("no_vote_vs_baseline"),
                     "vote_weight": p.get("vote_weight"),
                     "student_last_step_test_recall@10": p.get("reasoning", {}).get(
                         "student_last_step_test_recall@10"),
                     "by_group": p["vs_baseline_by_group"], "main": name == point}
    return {"label": doc["label"], **provenance(), "run": doc.get("command"), "protocol": doc["protocol"],
            "backbone_test": doc["points"]["baseline"]["test"], "points": out}


def lambda_points(doc: dict[str, Any], point: str) -> list[tuple[float, dict[str, Any]]]:
    pts = []
    for name, p in doc["points"].items():
        m = re.fullmatch(re.escape(point) + r"\.lambda([0-9.]+)", name)
        if (m or name == point) and "vs_baseline" in p:
            pts.append((float(m.group(1)) if m else float(p["fusion"]["contrastive_weight"]), p))
    return sorted(pts, key=lambda t: t[0])


def plot_lambda(doc: dict[str, Any], point: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = lambda_points(doc, point)
    if len(pts) < 2:
        return
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    draw_gains(ax, [(i, p) for i, (_, p) in enumerate(pts)])  # evenly spaced: the values span 0 and 0.02-0.5
    ax.set_xticks(range(len(pts)), [f"{x:g}" for x, _ in pts])
    ax.set_xlabel("lambda (contrastive weight)")
    ax.set_title("SCoTER gain by lambda (Beauty test, real H, seed 0)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_robustness(rows: list[dict[str, Any]], label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(rows[0]["by_group"])
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.8), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), groups, strict=True):
        width = 0.8 / len(rows)
        for j, r in enumerate(rows):
            g = r["by_group"][name]
            rel = [100 * (g[q]["relative"] or 0.0) for q in sorted(g)]
            base = [g[q]["diff"] / g[q]["relative"] if g[q]["relative"] else 0.0 for q in sorted(g)]
            se = [100 * g[q]["se"] / b if b else 0.0 for q, b in zip(sorted(g), base, strict=True)]
            x = np.arange(len(rel)) + (j - (len(rows) - 1) / 2) * width
            ax.bar(x, rel, width, yerr=[2 * s for s in se], capsize=2, label=f"seed {r['seed']} (±2 SE)")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(range(len(rel)))
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("quartile")
    np.atleast_1d(axes)[0].set_ylabel("relative Recall@10 gain, %")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"SCoTER gain by group, {label}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, action="append", required=True, help="a teacher_curve result, one per seed")
    ap.add_argument("--point", default="h:real", help="the SCoTER point each run shares")
    ap.add_argument("--dataset", default="beauty")
    args = ap.parse_args(argv)
    docs = [json.loads(p.read_text()) for p in args.run]
    missing = [str(p) for p, d in zip(args.run, docs, strict=True) if args.point not in d["points"]
               or "baseline" not in d["points"]]
    if missing:
        ap.error(f"--run: {missing} lack the 'baseline' or {args.point!r} point")
    main_doc = summary(docs, args.point)
    write_result(RESULTS / f"{args.dataset}_scoter.json", main_doc)
    write_result(RESULTS / f"{args.dataset}_ablations.json", ablations(docs[0], args.point))
    plot_robustness(main_doc["seeds"], docs[0]["label"], RESULTS / f"{args.dataset}_scoter_robustness.png")
    plot_lambda(docs[0], args.point, RESULTS / f"{args.dataset}_scoter_lambda.png")
    print(json.dumps({"gain": main_doc["relative_gain_mean_over_seeds"],
                      "gain_h_absent": main_doc["relative_gain_h_absent_mean_over_seeds"],
                      "targets": main_doc["targets"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
