"""Train (or continue) TIGER / HSTU on Beauty and evaluate on the full test split with beam 20, writing
benchmarks/results/beauty_backbones_<backbone>_<tag>.json. Per-device defaults: the paper's batch sizes with a
higher learning rate and a cosine decay over the time budget, since runs here are budget-bound.

    python -m benchmarks.beauty_backbones --backbone hstu --run-dir artifacts/beauty/backbones/hstu \
        --time-budget 420 --device cuda [--init-from best.pt] [--max-users N]

A killed run continues from <run-dir>/last.pt; `--init-from` warm-starts from another run's best.pt.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from benchmarks.harness import RESULTS, command

DEFAULTS = {  # (backbone, device type) -> TrainConfig overrides
    ("tiger", "cuda"): {"batch_size": 256, "lr": 2e-3, "warmup_steps": 500, "eval_users": 2000, "eval_batch": 1024},
    ("hstu", "cuda"): {"batch_size": 512, "lr": 2e-3, "warmup_steps": 200, "eval_users": 2000, "eval_batch": 1024},
    ("tiger", "cpu"): {"batch_size": 256, "lr": 2e-3, "warmup_steps": 100, "eval_users": 300},
    ("hstu", "cpu"): {"batch_size": 256, "lr": 2e-3, "warmup_steps": 100, "eval_users": 500},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=["tiger", "hstu"], required=True)
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints and log.jsonl")
    p.add_argument("--codes", type=Path, default=None, help="default: artifacts/beauty/semantic_ids_rqvae.npz")
    p.add_argument("--device", default="auto")
    p.add_argument("--time-budget", type=float, default=None, help="training seconds (evaluation not included)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--init-from", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override (JSON value)")
    p.add_argument("--tag", default=None, help="result name suffix (default: device type, + users if subset)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from offline.backbones.config import TrainConfig
    from offline.backbones.train import Trainer, default_codes_path
    from offline.data.splits import Splits
    from offline.semantic_ids.codes import SemanticIds
    from offline.training_utils import resolve_device

    device = resolve_device(args.device)
    overrides = dict(DEFAULTS[(args.backbone, device.type)])
    overrides.update(epochs=args.epochs, patience=args.patience, num_threads=args.threads)
    if args.time_budget:
        overrides.update(time_budget_s=args.time_budget, schedule="cosine")
    if args.max_users:
        overrides["max_users"] = args.max_users
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    cfg = TrainConfig(**overrides)
    codes_path = args.codes or default_codes_path("beauty")
    codes = SemanticIds.load(codes_path)
    splits = Splits.load("beauty", max_users=cfg.max_users)
    tag = args.tag or device.type + (f"_{args.max_users}users" if args.max_users else "")
    result = args.results_dir / f"beauty_backbones_{args.backbone}_{tag}.json"
    t0 = time.monotonic()
    trainer = Trainer(args.backbone, splits, codes, args.run_dir, cfg, device=str(device), init_from=args.init_from)
    trainer.fit()
    train_s = time.monotonic() - t0
    metrics = trainer.final_evaluation(result, progress=False)
    doc = json.loads(result.read_text())
    doc.update(command=command(),
               codes=str(codes_path), train_wall_s=train_s, steps=trainer.step)
    result.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps({"backbone": args.backbone, "test": metrics["test"], "result": str(result)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
