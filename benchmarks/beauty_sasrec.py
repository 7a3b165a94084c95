"""Beauty SASRec benchmark: re-evaluate the committed checkpoint (default) or train a fresh one (--train), and write
benchmarks/results/beauty_sasrec.json with valid/test metrics, subgroups and the time taken.

    python -m benchmarks.beauty_sasrec                      # evaluate the checkpoint (~2 min CPU)
    python -m benchmarks.beauty_sasrec --train --device cuda # retrain (~4 min on one H200)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from benchmarks.harness import command

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE / "checkpoints" / "beauty_sasrec.pt"
RESULT = HERE / "results" / "beauty_sasrec.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--train", action="store_true", help="train from scratch instead of loading the checkpoint"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--run-dir", type=Path, default=Path("artifacts") / "bench_beauty_sasrec")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument(
        "--train-results",
        type=Path,
        action="append",
        default=[],
        help="results.json of the training run(s) that produced the checkpoint (and variants): their "
        "training time, device and metrics are copied into the benchmark JSON",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from offline.baselines.sasrec import (
        SasrecConfig,
        evaluate_checkpoint,
        train_sasrec,
        write_checkpoint_result,
    )
    from offline.data.datasets import DataConfig
    from scoter.io import write_json_atomic

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.train:
        config = SasrecConfig(
            data=DataConfig(dataset="beauty", max_len=args.max_len), device=args.device, threads=args.threads
        )
        doc = train_sasrec(config, args.run_dir)
        doc["mode"] = "train"
        write_json_atomic(args.out, doc, default=str)
        print(json.dumps(doc["metrics"]["test"]["overall"], indent=2))
        return 0

    res = evaluate_checkpoint(args.checkpoint)
    elapsed = time.perf_counter() - t0
    training = [json.loads(Path(f).read_text()) for f in args.train_results]
    write_checkpoint_result(
        args.out,
        res,
        elapsed_s=elapsed,
        mode="evaluate-checkpoint",
        command=command(),
        checkpoint=str(
            args.checkpoint.relative_to(HERE.parent)
            if args.checkpoint.is_relative_to(HERE.parent)
            else args.checkpoint
        ),
        training_runs=[
            {
                "max_len": t["config"]["data"]["max_len"],
                "device": t["machine"],
                "train_s": t.get("train_s"),
                "elapsed_s": t.get("elapsed_s"),
                "best_epoch": t["metrics"].get("best_epoch"),
                "date": t["date"],
                "git_commit": t["git_commit"],
                "valid": t["metrics"]["valid"]["overall"],
                "test": t["metrics"]["test"]["overall"],
                "test_subgroups": t["metrics"]["test"].get("subgroups"),
            }
            for t in training
        ],
    )
    print(json.dumps({k: res[k]["overall"] for k in ("valid", "test")}, indent=2))
    print(f"wrote {args.out} in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
