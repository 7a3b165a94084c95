"""CLI: `scoter train scoter --backbone tiger|hstu` (backbone vs SCoTER, H present/absent) and `scoter ablate`
(the paper's Table 4/10 switches). No torch at import time; heavy modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from offline.cli_common import (
    add_backbone_data_args,
    add_train_flags,
    default_codes,
    get_or_add_subparsers,
    train_overrides,
)
from scoter.io import describe_output


def run_config_from_args(args: argparse.Namespace, ablation: str = "full") -> Any:
    from offline.backbones.config import TrainConfig
    from offline.fusion.experiments import ScoterRunConfig

    if args.reasoning is None:
        raise ValueError("--reasoning: required; give the H folder written by `scoter reason distill` "
                         "(e.g. $SCOTER_ARTIFACTS/<dataset>/reasoning): SCoTER trains on the student's reasoning")
    overrides = train_overrides(args)
    try:
        fusion = json.loads(args.fusion_config) if args.fusion_config else {}
        model_cfg = json.loads(args.model_config) if args.model_config else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--fusion-config/--model-config: invalid JSON: {exc.msg}") from exc
    if args.contrastive_weight is not None:
        fusion["contrastive_weight"] = args.contrastive_weight
    return ScoterRunConfig(
        backbone=args.backbone,
        dataset=args.dataset,
        data_root=args.data_root,
        max_users=args.max_users,
        codes_path=args.codes or default_codes(args.dataset),
        reasoning_dir=args.reasoning,
        backbone_config=model_cfg,
        fusion=fusion,
        ablation=ablation,
        train=TrainConfig.for_backbone(args.backbone, **overrides),
        out_dir=args.out,
        baseline_dir=args.baseline,
        init_from_baseline=args.init_from_baseline,
        init_from=args.init_from,
        device=args.device,
    )


def _train_scoter(args: argparse.Namespace) -> int:
    from offline.fusion.experiments import run_scoter

    cfg = run_config_from_args(args, args.ablation)
    doc = run_scoter(cfg, with_baseline=not args.no_baseline)
    keys = ("backbone_test", "scoter_test", "scoter_test_h_absent", "gain_h_present", "gain_h_absent")
    print(json.dumps({k: doc[k] for k in keys if k in doc}, indent=2))
    print(f"run folder: {describe_output(cfg.resolved_out())}")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from offline.fusion.experiments import run_ablations

    names = args.only.split(",") if args.only else None
    results = run_ablations(run_config_from_args(args), names)
    print(json.dumps({n: r["scoter_test"] for n, r in results.items()}, indent=2))
    return 0


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", choices=["tiger", "hstu", "sasrec-sid"], required=True)
    add_backbone_data_args(p)
    p.add_argument(
        "--reasoning",
        type=Path,
        default=None,
        help="(required) the H folder from `scoter reason distill` or `scoter reason encode`: "
        "H_{train,valid,test}.npy, present_*.npy, user_ids.json",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default: $SCOTER_ARTIFACTS/<dataset>/scoter-<backbone>)"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="plain backbone run folder to compare with, e.g. the `scoter train hstu` run (default: <out>/baseline; "
        "trained or resumed there first unless it holds a finished, evaluated run, which doubles the run; "
        "--no-baseline skips the comparison)",
    )
    p.add_argument("--init-from", type=Path, default=None,
                   help="warm-start from these backbone weights (e.g. the best.pt a continued --baseline also "
                   "started from: an equal-compute comparison)")
    p.add_argument("--init-from-baseline", action="store_true",
                   help="warm-start the backbone weights from the baseline's best.pt (fusion starts fresh)")
    p.add_argument("--model-config", default=None, help="JSON overrides of the backbone config")
    p.add_argument("--fusion-config", default=None, help="JSON overrides of FusionConfig")
    p.add_argument("--contrastive-weight", type=float, default=None, help="lambda (paper: 0.1)")
    add_train_flags(p)


# Kept in sync with offline.fusion.model.ABLATIONS (a test checks it); duplicated so `register` never imports torch.
ABLATION_NAMES = (
    "full",
    "no_position",
    "no_contrastive",
    "no_position_no_contrastive",
    "single_vector",
    "mean",
    "last",
    "no_vote",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `train scoter` and `ablate`."""
    train = get_or_add_subparsers(subparsers, "train", "train a model")
    p = train.add_parser(
        "scoter", help="train SCoTER (backbone + reasoning fusion) and compare with the backbone"
    )
    add_run_args(p)
    p.add_argument("--ablation", choices=ABLATION_NAMES, default="full")
    p.add_argument("--no-baseline", action="store_true", help="skip training/evaluating the plain backbone")
    p.set_defaults(func=_train_scoter)

    a = subparsers.add_parser("ablate", help="run the fusion ablations (paper Table 4/10), one run each")
    add_run_args(a)
    a.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ABLATION_NAMES)}")
    a.set_defaults(func=_ablate)
