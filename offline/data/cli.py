"""CLI: `scoter data stats`. No torch at import time (the service image runs `scoter serve` without it); the
dataset is loaded inside the handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from offline.cli_common import add_data_args, add_table_args, data_config


def _stats(args: argparse.Namespace) -> int:
    ds = data_config(args).load()
    s = ds.stats()
    if args.json:
        print(json.dumps({"name": ds.name, "checksum": ds.checksum, **s}))
    else:
        print(f"dataset       {ds.name}")
        print(f"users         {s['users']:,}")
        print(f"items         {s['items']:,}")
        print(f"interactions  {s['interactions']:,}")
        print(f"avg length    {s['avg_length']:.2f}")
        print(f"density       {s['density']:.6f}")
        print(f"sha256        {ds.checksum}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from offline.data.catalogue import ImportConfig, import_catalogue

    if args.interactions is None:
        raise ValueError("--interactions: required (the CSV/Parquet table of user, item, time)")
    cfg = ImportConfig(name=args.name or args.interactions.stem, data=data_config(args), out_root=args.out_root,
                       overwrite=args.overwrite)
    folder, ds = import_catalogue(cfg)
    s = ds.stats()
    print(json.dumps({"dataset": ds.name, "folder": str(folder), "users": s["users"], "items": s["items"],
                      "interactions": s["interactions"], "example_item_ids": ds.external_ids()[:3]}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `data`."""
    data = subparsers.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", help="users / items / interactions / average length")
    add_data_args(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON line")
    stats.set_defaults(func=_stats)

    imp = data_sub.add_parser(
        "import", help="own catalogue: a CSV/Parquet table -> a dataset every command reads by --dataset NAME",
        description="Write $SCOTER_ARTIFACTS/datasets/NAME/ (schema and examples: docs/own-catalogue.md). "
                    "The shop's item ids stay the public ids in requests, responses, histories and bundles.")
    add_table_args(imp)
    imp.add_argument("--name", default=None, help="dataset name for later --dataset (default: the table's file stem)")
    imp.add_argument("--out-root", type=Path, default=None, help="default: $SCOTER_ARTIFACTS/datasets")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    imp.set_defaults(func=_import)
