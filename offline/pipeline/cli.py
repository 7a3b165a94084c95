"""CLI: `scoter evaluate` (any saved SASRec / TIGER / HSTU / SCoTER checkpoint) and `scoter demo` (every stage
end to end). No torch at import time; the work is imported inside the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scoter.paths import artifacts_root


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from offline.baselines.sasrec import evaluate_checkpoint, write_checkpoint_result
    from offline.fusion.checkpoint import is_generative_checkpoint
    from offline.pipeline.evaluate import evaluate_generative_checkpoint
    from offline.training_utils import load_checkpoint

    torch.set_num_threads(args.threads)
    state = load_checkpoint(args.checkpoint)
    if is_generative_checkpoint(state):
        from model_export.source import recorded_dataset
        from offline.cli_common import default_codes

        dataset = args.dataset or recorded_dataset(args.checkpoint, state)
        if not dataset:
            raise ValueError(f"--dataset: {args.checkpoint} and its run folder record no dataset; pass --dataset")
        splits = ("valid", "test") if args.split == "both" else (args.split,)
        gen = evaluate_generative_checkpoint(
            args.checkpoint, dataset=dataset, codes_path=args.codes or default_codes(dataset),
            reasoning_dir=args.reasoning,
            beam=args.beam, batch_size=args.batch_size, max_users=args.max_users, splits=splits,
            data_root=args.data_root, device=args.device)
        print(json.dumps({k: gen[k] for k in ("valid", "test", "test_h_absent") if k in gen}, indent=2))
        if args.out:
            from scoter.io import write_json_atomic

            write_json_atomic(args.out, gen)
            print(f"results: {args.out}")
        return 0
    res = evaluate_checkpoint(args.checkpoint)
    summary = {split: res[split]["overall"] for split in ("valid", "test")}
    print(json.dumps(summary, indent=2))
    if args.out:
        write_checkpoint_result(args.out, res, checkpoint=str(args.checkpoint), model="sasrec")
        print(f"results: {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from offline.pipeline.demo import DemoConfig, run_demo

    cfg = DemoConfig.full() if args.full else DemoConfig()
    if args.users is not None:
        cfg.users = args.users or None
    out = Path(args.out) if args.out else artifacts_root() / ("demo-full" if args.full else "demo")
    run_demo(cfg, out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `evaluate` and `demo`."""
    ev = subparsers.add_parser("evaluate", help="re-evaluate a saved SASRec / TIGER / HSTU / SCoTER checkpoint")
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--out", type=Path, default=None, help="write a results JSON here")
    ev.add_argument("--dataset", default=None,
                    help="generative checkpoints: the dataset it was trained on (default: the one its run recorded)")
    ev.add_argument("--codes", type=Path, default=None,
                    help="generative checkpoints: semantic IDs .npz "
                         "(default: $SCOTER_ARTIFACTS/<dataset>/semantic_ids_{rqvae,rqkmeans}.npz)")
    ev.add_argument("--reasoning", type=Path, default=None, help="SCoTER checkpoints: the H folder")
    ev.add_argument("--beam", type=int, default=20)
    ev.add_argument("--max-users", type=int, default=None, help="first N users only")
    ev.add_argument("--data-root", type=Path, default=None, help="default: $SCOTER_DATA_DIR or ../shared/data")
    ev.add_argument("--split", choices=["valid", "test", "both"], default="both",
                    help="generative checkpoints: which splits to rank")
    ev.add_argument("--batch-size", type=int, default=256, help="generative checkpoints: users per beam batch")
    ev.add_argument("--device", default="cpu", help="generative checkpoints: cpu, cuda, cuda:1, auto")
    ev.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ev.set_defaults(func=_evaluate)

    p = subparsers.add_parser("demo", help="run every stage end to end, then query the running service")
    p.add_argument("--full", action="store_true", help="whole dataset, paper-scale settings (hours on a CPU)")
    p.add_argument("--users", type=int, default=None, help="subset size (0 = all users)")
    p.add_argument("--out", default=None, help="output folder (default: $SCOTER_ARTIFACTS/demo)")
    p.set_defaults(func=_cmd_demo)
