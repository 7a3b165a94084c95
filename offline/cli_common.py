"""Argument helpers shared by the offline CLI modules (`scoter data`, `scoter train ...`, `scoter ablate`).

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


NO_SUB_WINDOWS_HELP = ("all-position training: only each user's newest history window (default: every window, so "
                       "the older targets of users longer than the window are trained too)")


def add_train_flags(p: argparse.ArgumentParser, backbone: str | None = None) -> None:
    """`--epochs`, `--batch-size`, ... `--time-budget`: the TrainConfig overrides of TRAIN_FLAGS; `--help` names
    TrainConfig's default for each (that backbone's, when known)."""
    from offline.backbones.config import TrainConfig  # pydantic only, no torch

    base = TrainConfig.for_backbone(backbone) if backbone else TrainConfig()
    for flag, typ in TRAIN_FLAGS:
        field = _TRAIN_FIELD.get(flag, flag.replace("-", "_"))
        value = getattr(base, field)
        desc = TrainConfig.model_fields[field].description or ""
        shown = "none" if value is None else value
        note = "" if backbone or flag != "batch-size" else ", per backbone"
        text = "stop training after this many seconds (a resumed run continues the budget)" if flag == "time-budget" else desc
        p.add_argument(f"--{flag}", type=typ, default=None, help=f"{text} (default: {shown}{note})".strip())
    p.add_argument("--no-sub-windows", action="store_true", default=None, help=NO_SUB_WINDOWS_HELP)
    p.add_argument("--schedule", choices=["constant", "cosine"], default=None,
                   help="learning rate after warmup: constant, or cosine over the epochs or the --time-budget "
                        f"(default: {base.schedule})")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig field -> value for every TRAIN_FLAGS flag given on the command line, plus `max_users`."""
    overrides: dict[str, Any] = {}
    for flag, _ in TRAIN_FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            overrides[_TRAIN_FIELD.get(flag, flag.replace("-", "_"))] = value
    if args.schedule is not None:
        overrides["schedule"] = args.schedule
    if getattr(args, "no_sub_windows", None):
        overrides["sub_windows"] = False
    if args.max_users is not None:
        overrides["max_users"] = args.max_users
    return overrides


DATASET_HELP = ("dataset name: a benchmark under $SCOTER_DATA_DIR (e.g. beauty) or a catalogue imported with "
                "`scoter data import` ($SCOTER_ARTIFACTS/datasets)")


def add_dataset_args(p: argparse.ArgumentParser, default: str | None = None, required: bool = False) -> None:
    """`--dataset` (a benchmark or imported catalogue) and `--data-root` (None -> look in both places)."""
    p.add_argument("--dataset", default=default, required=required, help=DATASET_HELP)
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding <dataset>/ (default: $SCOTER_DATA_DIR, then $SCOTER_ARTIFACTS/datasets)")


def default_codes(dataset: str) -> Path:
    """The semantic IDs `scoter sid build --dataset D` wrote: artifacts/<D>/semantic_ids_rqvae.npz, else the
    rqkmeans one when only that exists (the path named in the error when neither does)."""
    from scoter.paths import artifacts_root

    folder = artifacts_root() / dataset.split("[")[0]
    for method in ("rqvae", "rqkmeans"):
        if (folder / f"semantic_ids_{method}.npz").exists():
            return folder / f"semantic_ids_{method}.npz"
    return folder / "semantic_ids_rqvae.npz"


def add_data_args(p: argparse.ArgumentParser, default_dataset: str | None = None) -> None:
    """`--dataset`/`--data-root`, or a custom table (`--interactions`, its columns, `--k-core`), and the history length."""
    add_dataset_args(p, default=default_dataset)
    add_table_args(p)
    p.add_argument("--max-len", type=int, default=20, help="history length (paper: 20)")
    p.add_argument("--max-users", type=int, default=None, help="use only the first N users")


def add_table_args(p: argparse.ArgumentParser) -> None:
    """An own-catalogue table: `--interactions`, its column names, the item table and its columns, `--k-core`
    (the schema is docs/own-catalogue.md)."""
    p.add_argument("--interactions", type=Path, default=None,
                   help="CSV or Parquet table, one row per interaction (user, item, time)")
    p.add_argument("--user-col", default="user", help="--interactions: user id column")
    p.add_argument("--item-col", default="item", help="--interactions: item id column (the shop's ids)")
    p.add_argument("--time-col", default="timestamp",
                   help="--interactions: time column (numbers, or dates/times pandas can parse)")
    p.add_argument("--items", type=Path, default=None,
                   help="optional item table (CSV, Parquet or JSONL): id, title, brand, categories")
    p.add_argument("--items-id-col", default=None,
                   help="--items: id column (default: --item-col if the item table has it, else item_id)")
    p.add_argument("--title-col", default="title", help="--items: title column")
    p.add_argument("--brand-col", default="brand", help="--items: brand column")
    p.add_argument("--categories-col", default="categories",
                   help="--items: categories column (a list, or one string split on --categories-sep)")
    p.add_argument("--categories-sep", default="|", help="--items: separator inside a categories string")
    p.add_argument("--k-core", type=int, default=5, help="--interactions: iterative k-core filter (0 = none)")


def data_config(args: argparse.Namespace):  # -> DataConfig
    """The DataConfig those flags describe (imported here: pydantic only, but kept out of module import)."""
    from offline.data.datasets import DataConfig, ItemColumns

    if getattr(args, "dataset", None) is None and args.interactions is None:
        raise ValueError("give --dataset NAME or --interactions PATH")
    return DataConfig(
        columns=ItemColumns(id=args.items_id_col, title=args.title_col, brand=args.brand_col,
                            categories=args.categories_col, categories_sep=args.categories_sep),
        dataset=None if args.interactions else args.dataset,
        root=getattr(args, "data_root", None),
        interactions_path=args.interactions,
        items_path=args.items,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        k_core=args.k_core,
        max_len=getattr(args, "max_len", 20),
        max_users=getattr(args, "max_users", None),
    )


def add_backbone_data_args(p: argparse.ArgumentParser) -> None:
    """`--dataset`, `--data-root`, `--codes`, `--max-users`, `--device`: what a backbone run reads and runs on."""
    add_dataset_args(p, required=True)
    p.add_argument(
        "--codes",
        type=Path,
        default=None,
        help="semantic IDs .npz (default: $SCOTER_ARTIFACTS/<dataset>/semantic_ids_{rqvae,rqkmeans}.npz)",
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
