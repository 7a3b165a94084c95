"""CLI: `scoter train tiger|hstu` (`scoter evaluate` re-ranks a saved checkpoint). No torch at import time; heavy
modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from offline.cli_common import (
    add_backbone_data_args,
    add_train_flags,
    default_codes,
    get_or_add_subparsers,
    train_overrides,
)
from scoter.io import describe_output
from scoter.paths import artifacts_root


def _train(args: argparse.Namespace) -> int:
    from offline.backbones.config import TrainConfig
    from offline.backbones.train import Trainer
    from offline.data.splits import Splits
    from offline.semantic_ids.codes import SemanticIds

    overrides = train_overrides(args)
    cfg = TrainConfig.for_backbone(args.backbone, **overrides)
    model_cfg = json.loads(args.model_config) if args.model_config else None
    codes = SemanticIds.load(args.codes or default_codes(args.dataset))
    splits = Splits.load(args.dataset, max_users=cfg.max_users, root=args.data_root)
    out = args.out or artifacts_root() / args.dataset / args.backbone
    trainer = Trainer(args.backbone, splits, codes, out, cfg, model_cfg, device=args.device, init_from=args.init_from)
    if getattr(args, "init_from_sasrec", None) is not None and trainer.step == 0:
        from offline.backbones.sasrec_sid import init_from_sasrec

        init_from_sasrec(trainer.model, args.init_from_sasrec)
        print(f"encoder and item table initialised from {args.init_from_sasrec}")
    trainer.fit()
    if not args.no_final_eval:
        metrics = trainer.final_evaluation(args.result)
        if metrics:  # empty on torchrun ranks other than 0
            print(json.dumps(metrics["test"], indent=2))
            print(f"run folder: {describe_output(out)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `train tiger`, `train hstu` and `train sasrec-sid`."""
    train = get_or_add_subparsers(subparsers, "train", "train a model")
    helps = {"tiger": "train the TIGER generative backbone (resumable)",
             "hstu": "train the HSTU generative backbone (resumable)",
             "sasrec-sid": "train SASRec's encoder with the semantic-ID item-aware head (resumable)"}
    for backbone, text in helps.items():
        p = train.add_parser(backbone, help=text)
        add_backbone_data_args(p)
        p.add_argument(
            "--out", type=Path, default=None, help="run folder (default: $SCOTER_ARTIFACTS/<dataset>/<backbone>)"
        )
        p.add_argument("--model-config", default=None, help="JSON overrides of the backbone config")
        p.add_argument("--result", type=Path, default=None, help="results JSON (default: <out>/result.json)")
        p.add_argument("--no-final-eval", action="store_true", help="skip the full valid/test evaluation")
        p.add_argument("--init-from", type=Path, default=None,
                       help="weights-only checkpoint to start from when --out has no last.pt")
        if backbone == "sasrec-sid":
            p.add_argument("--init-from-sasrec", type=Path, default=None,
                           help="a `scoter train sasrec` checkpoint whose encoder and item table start the model")
        add_train_flags(p, backbone)
        p.set_defaults(func=_train, backbone=backbone)
