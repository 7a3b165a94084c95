"""What the SCoTER benchmarks (beauty_scoter, ablations, robustness) share: their command-line options, the run
configuration those options describe, and the provenance of a training run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import provenance
from offline.backbones.config import TrainConfig
from offline.fusion.experiments import ScoterRunConfig


def add_args(ap: argparse.ArgumentParser) -> None:
    """Options shared by the SCoTER benchmarks (data size, budget, reasoning source, device)."""
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--max-users", type=int, default=None, help="first N users only (CPU-sized runs)")
    ap.add_argument("--codes", type=Path, default=None, help="semantic IDs .npz (default: artifacts/<ds>/...)")
    ap.add_argument("--reasoning", type=Path, required=True, help="the H folder from `scoter reason distill`")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--patience", type=int, default=None)
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--schedule", choices=["constant", "cosine"], default=None)
    ap.add_argument("--eval-users", type=int, default=None)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds per training run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: TrainConfig's, 0)")
    ap.add_argument("--model-config", default=None, help="JSON backbone overrides (applied to every backbone)")
    ap.add_argument("--fusion-config", default=None, help="JSON FusionConfig overrides")
    ap.add_argument("--baseline", type=Path, default=None, help="reuse this plain-backbone run folder")
    ap.add_argument("--init-from-baseline", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tag", default="default", help="names the run folder and the results file")


def run_config(args: argparse.Namespace, backbone: str, out: Path, **updates: Any) -> ScoterRunConfig:
    """The ScoterRunConfig of one backbone from the shared options."""
    train: dict[str, Any] = {"num_threads": args.threads}
    for key in ("epochs", "batch_size", "lr", "patience", "eval_users", "warmup_steps", "schedule", "seed"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    if args.time_budget is not None:
        train["time_budget_s"] = args.time_budget
    cfg = ScoterRunConfig(
        backbone=backbone, dataset=args.dataset, max_users=args.max_users, codes_path=args.codes,
        reasoning_dir=args.reasoning, train=TrainConfig.for_backbone(backbone, **train),
        backbone_config=json.loads(args.model_config) if args.model_config else None,
        fusion=json.loads(args.fusion_config) if args.fusion_config else {},
        out_dir=out, baseline_dir=args.baseline, init_from_baseline=args.init_from_baseline, device=args.device,
    )
    return cfg.model_copy(update=updates)


def run_provenance(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """Date, machine (the GPU's name when one trained), commit, command, elapsed time and torch threads."""
    device = torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available() else None
    return provenance(device, elapsed_s=round(time.perf_counter() - started, 1), torch_threads=torch.get_num_threads())
