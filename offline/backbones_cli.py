"""CLI: `scoter train tiger|hstu` and `scoter rank` (evaluate a trained backbone with the constrained beam
search). No torch at import time; heavy modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from offline.cli_common import add_backbone_data_args, add_train_flags, get_or_add_subparsers, train_overrides


def _train(args: argparse.Namespace) -> int:
    from offline.backbones.config import TrainConfig
    from offline.backbones.train import Splits, Trainer, default_codes_path
    from offline.semantic_ids import SemanticIds

    overrides = train_overrides(args)
    cfg = TrainConfig.for_backbone(args.backbone, **overrides)
    model_cfg = json.loads(args.model_config) if args.model_config else None
    codes = SemanticIds.load(args.codes or default_codes_path(args.dataset))
    splits = Splits.load(args.dataset, max_users=cfg.max_users, root=args.data_root)
    out = args.out or Path("artifacts") / args.dataset / args.backbone
    trainer = Trainer(args.backbone, splits, codes, out, cfg, model_cfg, device=args.device, init_from=args.init_from)
    trainer.fit()
    if not args.no_final_eval:
        metrics = trainer.final_evaluation(args.result)
        print(json.dumps(metrics["test"], indent=2))
    return 0


def _rank(args: argparse.Namespace) -> int:
    import torch

    from offline.backbones.beam_search import TrieTensors
    from offline.backbones.train import Splits, default_codes_path, evaluate, load_model, resolve_device
    from offline.semantic_ids import SemanticIds

    torch.set_num_threads(args.threads)
    codes = SemanticIds.load(args.codes or default_codes_path(args.dataset))
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, codes).to(device)
    trie = TrieTensors.for_model(model).to(device)
    splits = Splits.load(args.dataset, max_users=args.max_users, root=args.data_root)
    hist, tgt = splits.valid if args.split == "valid" else splits.test
    metrics = evaluate(model, trie, hist, tgt, beam=args.beam, batch_size=args.batch_size, progress=True)
    print(json.dumps(metrics, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `train tiger`, `train hstu` and `rank`."""
    train = get_or_add_subparsers(subparsers, "train", "train a model")
    for backbone in ("tiger", "hstu"):
        p = train.add_parser(backbone, help=f"train the {backbone.upper()} generative backbone (resumable)")
        add_backbone_data_args(p)
        p.add_argument(
            "--out", type=Path, default=None, help="run folder (default: artifacts/<dataset>/<backbone>)"
        )
        p.add_argument("--model-config", default=None, help="JSON overrides of the backbone config")
        p.add_argument("--result", type=Path, default=None, help="results JSON (default: <out>/result.json)")
        p.add_argument("--no-final-eval", action="store_true", help="skip the full valid/test evaluation")
        p.add_argument("--init-from", type=Path, default=None,
                       help="weights-only checkpoint to start from when --out has no last.pt")
        add_train_flags(p)
        p.set_defaults(func=_train, backbone=backbone)

    r = subparsers.add_parser("rank", help="evaluate a trained TIGER/HSTU checkpoint with the beam search")
    add_backbone_data_args(r)
    r.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt from `scoter train`")
    r.add_argument("--split", choices=["valid", "test"], default="test")
    r.add_argument("--beam", type=int, default=20)
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=_rank)
