"""The encoder student's loss, measured where it matters: its "Item Recommendation" step used alone as a retriever.

A hindsight chain's last step names the true next item (q = 1 in benchmarks/teacher_curve.py). A linear head on the
recency-weighted history vector (the project's default student input) learns that step from N training rows with
(a) per-step cosine + MSE, (b) in-batch InfoNCE, (c) both; test Recall@10 of the predicted step among every item's
"Item Recommendation: <item>" vector, history excluded, beside the untrained history vector as the query.

    python -m benchmarks.student_losses --rows 3428,22000 --out benchmarks/results/beauty_student_losses.json
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import provenance, write_result
from benchmarks.teacher_curve import item_steps, step_recall_at_10
from offline.data.datasets import LeaveOneOut, load_benchmark
from offline.reasoning.config import EncoderStudentConfig
from offline.reasoning.encode import history_vectors, item_embeddings, sentence_encoder
from offline.reasoning.grounding import Grounding
from offline.reasoning.students import EncoderStudent

log = logging.getLogger("student_losses")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--rows", default="3428,22000", help="training rows (teacher chains) per run")
    ap.add_argument("--test-users", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/beauty_student_losses.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    ds = load_benchmark(args.dataset)
    loo = LeaveOneOut(ds)
    items = item_embeddings(ds).astype(np.float32)
    step = item_steps(ds, Grounding(ds), sentence_encoder())
    rng = np.random.default_rng(1)
    test_h, test_t = loo.eval_examples("test")
    ev = rng.choice(len(test_t), min(args.test_users, len(test_t)), replace=False)

    def pooled(h: np.ndarray) -> np.ndarray:
        return history_vectors([r[r > 0] for r in h], items, max_items=10, decay=0.8)

    p_test = pooled(test_h[ev])
    runs: dict[str, Any] = {"untrained (history vector as the query)": step_recall_at_10(p_test, step, test_h[ev], test_t[ev])}
    train_h, train_t = loo.train_examples()
    losses = {"cosine + MSE": {"contrastive_weight": 0.0, "batch_size": 16},
              "InfoNCE": {"contrastive_weight": 1.0, "cos_weight": 0.0, "mse_weight": 0.0},
              "cosine + MSE + InfoNCE (default)": {}}
    for n in (int(x) for x in args.rows.split(",")):
        sel = rng.choice(len(train_t), min(n, len(train_t)), replace=False)
        x = pooled(train_h[sel])
        target = step[train_t[sel]][:, None, :]  # K = 1: the last step only
        for name, over in losses.items():
            cfg = EncoderStudentConfig(epochs=args.epochs, **over)
            torch.manual_seed(cfg.seed)
            student = EncoderStudent(sentence_encoder(), 1, cfg)
            t0 = time.perf_counter()
            student.fit(None, target, pooled=x, log_every=0)
            pred = student.predict(None, pooled=p_test)[:, 0]
            runs[f"{name}, {n} rows"] = {**step_recall_at_10(pred, step, test_h[ev], test_t[ev]),
                                         "fit_s": time.perf_counter() - t0, "config": cfg.model_dump()}
            log.info("%s, %d rows: %s", name, n, runs[f"{name}, {n} rows"]["recall@10"])
    write_result(args.out, {**provenance(), "dataset": ds.name, "test_users": len(ev), "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
