"""CLI: `scoter train tiger|hstu` and `scoter rank` (evaluate a trained backbone with the constrained beam
search). No torch at import time; heavy modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_TRAIN_FLAGS: tuple[tuple[str, type], ...] = (
    ("epochs", int),
    ("batch-size", int),
    ("lr", float),
    ("weight-decay", float),
    ("warmup-steps", int),
    ("patience", int),
    ("beam", int),
    ("eval-users", int),
    ("eval-every", int),
    ("eval-batch", int),
    ("seed", int),
    ("threads", int),
    ("time-budget", float),
)


def _train(args: argparse.Namespace) -> int:
    from offline.backbones.config import TrainConfig
    from offline.backbones.train import Splits, Trainer, default_codes_path
    from offline.semantic_ids import SemanticIds

    overrides: dict[str, Any] = {}
    for flag, _ in _TRAIN_FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            key = {"threads": "num_threads", "time-budget": "time_budget_s"}.get(flag, flag.replace("-", "_"))
            overrides[key] = value
    if args.max_users is not None:
        overrides["max_users"] = args.max_users
    if args.schedule is not None:
        overrides["schedule"] = args.schedule
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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="beauty", help="benchmark folder under the data root")
    p.add_argument("--data-root", type=Path, default=None, help="default: $SCOTER_DATA_DIR or ../shared/data")
    p.add_argument(
        "--codes",
        type=Path,
        default=None,
        help="semantic IDs .npz (default: artifacts/<dataset>/semantic_ids_rqvae.npz)",
    )
    p.add_argument("--max-users", type=int, default=None, help="use only the first N users")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `train tiger`, `train hstu` and `rank`."""
    train = _get_or_add(subparsers, "train", "train a model")
    for backbone in ("tiger", "hstu"):
        p = train.add_parser(backbone, help=f"train the {backbone.upper()} generative backbone (resumable)")
        _common(p)
        p.add_argument(
            "--out", type=Path, default=None, help="run folder (default: artifacts/<dataset>/<backbone>)"
        )
        p.add_argument("--model-config", default=None, help="JSON overrides of the backbone config")
        p.add_argument("--result", type=Path, default=None, help="results JSON (default: <out>/result.json)")
        p.add_argument("--no-final-eval", action="store_true", help="skip the full valid/test evaluation")
        p.add_argument("--init-from", type=Path, default=None,
                       help="weights-only checkpoint to start from when --out has no last.pt")
        p.add_argument("--schedule", choices=["constant", "cosine"], default=None)
        for flag, typ in _TRAIN_FLAGS:
            p.add_argument(f"--{flag}", type=typ, default=None)
        p.set_defaults(func=_train, backbone=backbone)

    r = subparsers.add_parser("rank", help="evaluate a trained TIGER/HSTU checkpoint with the beam search")
    _common(r)
    r.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt from `scoter train`")
    r.add_argument("--split", choices=["valid", "test"], default="test")
    r.add_argument("--beam", type=int, default=20)
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=_rank)


def _get_or_add(subparsers: argparse._SubParsersAction, name: str, help_: str) -> argparse._SubParsersAction:
    """`scoter train` is shared with other components: reuse its sub-parsers if another module registered it
    first (same convention as offline/data_cli.py), else create it and keep the handle for them."""
    existing = subparsers.choices.get(name)
    if existing is not None and getattr(existing, "_scoter_sub", None) is not None:
        return existing._scoter_sub
    parser = subparsers.add_parser(name, help=help_)
    sub = parser.add_subparsers(dest=f"{name}_command", required=True)
    parser._scoter_sub = sub  # type: ignore[attr-defined]
    return sub
