"""Evaluate trained checkpoints on a benchmark's full test split (full ranking) with standard errors, by how often
the target occurs as a training target, and by target-item popularity quartile.

Generative checkpoints (TIGER/HSTU/SCoTER) rank with the trie-constrained beam search (beam 20); SASRec ranks the
whole catalogue exactly. Each checkpoint is one entry of the output JSON; the training run's log (log.jsonl or the
SASRec results.json next to the checkpoint) adds training time and examples/s.

    python -m benchmarks.beauty_generative --out benchmarks/results/beauty_generative.json \
        --generative artifacts/beauty/hstu-item/best.pt --codes benchmarks/checkpoints/beauty_semantic_ids_rqvae.npz
    python -m benchmarks.beauty_generative --out benchmarks/results/beauty_sasrec_cpu.json \
        --sasrec artifacts/beauty/sasrec-cpu/best.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import provenance, write_result

FREQ_BUCKETS = ((1, 2), (3, 5), (6, 10), (11, None))
log = logging.getLogger(__name__)


def per_user(topk: np.ndarray, targets: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Hit@k and NDCG@k of every user (one relevant item each)."""
    match = topk[:, :k] == targets[:, None]
    hit = match.any(axis=1).astype(float)
    rank = match.argmax(axis=1)
    ndcg = np.where(hit > 0, 1.0 / np.log2(rank + 2.0), 0.0)
    return hit, ndcg


def mean_se(values: np.ndarray) -> dict[str, float]:
    n = len(values)
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": round(float(values.mean()), 5), "se": round(se, 5), "users": int(n)}


def breakdown(topk: np.ndarray, targets: np.ndarray, target_freq: np.ndarray, pop_group: np.ndarray) -> dict:
    """Overall R@10/N@10 with standard errors, then per target-frequency bucket and popularity quartile."""
    hit, ndcg = per_user(topk, targets)
    out: dict[str, Any] = {"recall@10": mean_se(hit), "ndcg@10": mean_se(ndcg)}
    hit20, _ = per_user(topk, targets, 20)
    out["recall@20"] = mean_se(hit20)
    freq = target_freq[targets]
    buckets = {}
    for lo, hi in FREQ_BUCKETS:
        sel = (freq >= lo) & (freq <= (hi if hi is not None else np.inf))
        label = f"{lo}-{hi}" if hi is not None else f"{lo}+"
        buckets[label] = {"share": round(float(sel.mean()), 4), "recall@10": mean_se(hit[sel])}
    sel = freq == 0
    if sel.any():
        buckets["0"] = {"share": round(float(sel.mean()), 4), "recall@10": mean_se(hit[sel])}
    out["by_target_train_frequency"] = buckets
    groups = pop_group[targets]
    out["by_popularity_quartile"] = {
        f"q{g + 1}": {"share": round(float((groups == g).mean()), 4), "recall@10": mean_se(hit[groups == g])}
        for g in range(4)
    }
    return out


def training_facts(checkpoint: Path) -> dict[str, Any]:
    """Training seconds and examples/s from the run folder's log, where there is one."""
    run = checkpoint.parent
    facts: dict[str, Any] = {}
    lines = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").exists() else []
    if lines:
        records = [json.loads(x) for x in lines]
        facts["epochs"] = records[-1]["epoch"]
        facts["train_s"] = round(sum(r["train_s"] for r in records), 1)
    results = run / "results.json"
    if results.exists():
        doc = json.loads(results.read_text())
        facts["train_s"] = round(doc.get("train_s", 0.0), 1)
        facts["best_epoch"] = doc.get("metrics", {}).get("best_epoch")
    return facts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--generative", type=Path, action="append", default=[], help="TIGER/HSTU/SCoTER checkpoint")
    p.add_argument("--sasrec", type=Path, action="append", default=[], help="SASRec checkpoint")
    p.add_argument("--codes", type=Path, default=None, help="semantic IDs of the generative checkpoints")
    p.add_argument("--prior-weights", default=None,
                   help="item-aware head: comma-separated prior weights the beam scores with (default: the model's)")
    p.add_argument("--served", default=None, help="name of the entry the served bundle is exported from, or 'best-valid' (the generative "
                   "entry with the best validation Recall@10)")
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-users", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from offline.data.datasets import LeaveOneOut, load_benchmark
    from offline.data.evaluation import group_items_by_popularity

    torch.set_num_threads(args.threads)
    ds = load_benchmark(args.dataset)
    if args.max_users:
        ds = ds.subset(args.max_users)
    loo = LeaveOneOut(ds, max_len=20)
    _, train_targets = loo.train_examples()
    target_freq = np.bincount(train_targets, minlength=ds.n_items + 1)
    pop_group = group_items_by_popularity(loo.train_item_counts())
    splits = {s: loo.eval_examples(s) for s in ("valid", "test")}
    models: dict[str, Any] = {}
    test_hits: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per-user (hit@10, ndcg@10) for paired differences

    def run(name: str, recommend, facts: dict[str, Any]) -> None:
        """valid and test under the served rule (history items excluded), test also under the paper's protocol
        (history items may be ranked), so numbers compare with published ones."""
        entry: dict[str, Any] = {**facts, "protocol": "history items excluded (the served rule); "
                                 "test_paper_protocol: history items may be ranked (SCoTER/TIGER papers)"}
        for split, (hist, tgt) in [*splits.items(), ("test_paper_protocol", splits["test"])]:
            t0 = time.perf_counter()
            topk, _ = recommend(hist, 20, split != "test_paper_protocol")
            entry[split] = breakdown(topk, tgt, target_freq, pop_group)
            if split in ("test", "test_paper_protocol"):
                test_hits[name if split == "test" else f"{name} [paper protocol]"] = per_user(topk, tgt)
            entry[f"{split}_rank_s"] = round(time.perf_counter() - t0, 1)
        log.info("%s: test R@10 %.4f N@10 %.4f (paper protocol %.4f / %.4f)", name,
                 entry["test"]["recall@10"]["mean"], entry["test"]["ndcg@10"]["mean"],
                 entry["test_paper_protocol"]["recall@10"]["mean"], entry["test_paper_protocol"]["ndcg@10"]["mean"])
        models[name] = entry

    for path in args.sasrec:
        from offline.baselines.sasrec import load_sasrec

        model, ck = load_sasrec(path)
        run(f"sasrec:{path}", lambda h, k, ex, m=model: m.recommend(h, k, exclude_history=ex),
            {"model": "sasrec", "checkpoint": str(path),
                                                "config": ck["config"], **training_facts(path)})
    if args.generative:
        from offline.fusion.checkpoint import load_ranking_model
        from offline.semantic_ids.codes import SemanticIds

        codes = SemanticIds.load(args.codes)
        for path in args.generative:
            model = load_ranking_model(path, codes)
            state_cfg = model.config.model_dump()
            weights = [None]
            if model.head is not None and args.prior_weights:
                weights = [float(w) for w in args.prior_weights.split(",")]
            for w in weights:
                if w is not None:
                    model.head.prior_weight = w
                name = f"{type(model).__name__}:{path}" + ("" if w is None else f":prior_weight={w}")
                run(name, lambda h, k, ex, m=model: m.recommend(h, k, beam=args.beam, exclude_history=ex),
                    {"model": "generative", "checkpoint": str(path), "config": state_cfg, "beam": args.beam,
                     "prior_weight_at_ranking": w, **training_facts(path)})
    doc: dict[str, Any] = {**provenance(), "dataset": ds.name}
    baselines = [n for n, m in models.items() if m["model"] == "sasrec"]
    # generative minus SASRec, and every later SASRec minus the first (e.g. a recipe change), on the same test users:
    # mean and standard error of the per-user difference
    paired = {}
    for name, m in models.items():
        if m["model"] != "generative" and name not in baselines[1:]:
            continue
        for base in baselines if m["model"] == "generative" else baselines[:1]:
            for suffix in ("", " [paper protocol]"):
                (h, n), (hb, nb) = test_hits[name + suffix], test_hits[base + suffix]
                paired[f"{name} - {base}{suffix}"] = {"recall@10": mean_se(h - hb), "ndcg@10": mean_se(n - nb)}
    if paired:
        doc["paired_test_differences"] = paired
    if args.served == "best-valid":  # model selection on validation only
        generative = [n for n, m in models.items() if m["model"] == "generative"]
        args.served = max(generative, key=lambda n: models[n]["valid"]["recall@10"]["mean"])
    if args.served:  # the entry a bundle is exported from: its metrics also at the top level
        doc.update(served=args.served, valid=models[args.served]["valid"], test=models[args.served]["test"])
    write_result(args.out, {**doc, "models": models})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
