"""Argument helpers shared by the offline CLI modules (`scoter train ...`, `scoter rank`, `scoter ablate`).

No torch (or other heavy) import here: the CLI modules import this at module level and `scoter serve` must run
without torch (docs/CONTRACTS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Optional TrainConfig overrides, as (flag, type); default None = keep the backbone's TrainConfig default.
TRAIN_FLAGS: tuple[tuple[str, type], ...] = (
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
_TRAIN_FIELD = {"threads": "num_threads", "time-budget": "time_budget_s"}


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """`--epochs`, `--batch-size`, ... `--time-budget`: the TrainConfig overrides of TRAIN_FLAGS."""
    for flag, typ in TRAIN_FLAGS:
        p.add_argument(f"--{flag}", type=typ, default=None)
    p.add_argument("--schedule", choices=["constant", "cosine"], default=None,
                   help="learning rate after warmup: constant, or cosine over the epochs or the --time-budget")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig field -> value for every TRAIN_FLAGS flag given on the command line, plus `max_users`."""
    overrides: dict[str, Any] = {}
    for flag, _ in TRAIN_FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            overrides[_TRAIN_FIELD.get(flag, flag.replace("-", "_"))] = value
    if args.schedule is not None:
        overrides["schedule"] = args.schedule
    if args.max_users is not None:
        overrides["max_users"] = args.max_users
    return overrides


def add_dataset_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """`--dataset` (a benchmark folder) and `--data-root` (None -> scoter.paths.data_root())."""
    p.add_argument("--dataset", default=default, help="benchmark folder under the data root (e.g. beauty)")
    p.add_argument("--data-root", type=Path, default=None, help="default: $SCOTER_DATA_DIR or ../shared/data")


def add_backbone_data_args(p: argparse.ArgumentParser) -> None:
    """`--dataset`, `--data-root`, `--codes`, `--max-users`, `--device`: what a backbone run reads and runs on."""
    add_dataset_args(p, default="beauty")
    p.add_argument(
        "--codes",
        type=Path,
        default=None,
        help="semantic IDs .npz (default: artifacts/<dataset>/semantic_ids_rqvae.npz)",
    )
    p.add_argument("--max-users", type=int, default=None, help="use only the first N users")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")


def get_or_add_subparsers(
    subparsers: argparse._SubParsersAction, name: str, help_: str
) -> argparse._SubParsersAction:
    """A command shared by several CLI modules (`scoter train tiger|hstu|scoter|sasrec`): reuse its sub-parsers if
    another module registered it first, else create it and keep the handle on the parser for the others."""
    existing = subparsers.choices.get(name)
    if existing is not None and getattr(existing, "_scoter_sub", None) is not None:
        return existing._scoter_sub
    parser = subparsers.add_parser(name, help=help_)
    sub = parser.add_subparsers(dest=f"{name}_command", required=True)
    parser._scoter_sub = sub  # type: ignore[attr-defined]
    return sub
