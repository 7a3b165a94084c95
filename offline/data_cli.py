"""CLI: `scoter data stats`, `scoter train sasrec`, `scoter evaluate`. No torch at import time (the service
image runs `scoter serve` without it); heavy modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from offline.cli_common import add_dataset_args, get_or_add_subparsers


def _add_data_args(p: argparse.ArgumentParser, default_dataset: str | None = None) -> None:
    add_dataset_args(p, default=default_dataset)
    p.add_argument("--interactions", type=Path, default=None, help="CSV/Parquet user,item,timestamp table")
    p.add_argument("--items", type=Path, default=None, help="optional item table for --interactions")
    p.add_argument("--user-col", default="user")
    p.add_argument("--item-col", default="item")
    p.add_argument("--time-col", default="timestamp")
    p.add_argument("--k-core", type=int, default=5, help="k-core for --interactions (default 5)")
    p.add_argument("--max-len", type=int, default=20, help="history length (paper: 20)")
    p.add_argument("--max-users", type=int, default=None, help="use only the first N users")


def _data_config(args: argparse.Namespace):  # -> DataConfig
    from offline.data import DataConfig

    if args.dataset is None and args.interactions is None:
        raise ValueError("give --dataset NAME or --interactions PATH")
    return DataConfig(
        dataset=None if args.interactions else args.dataset,
        root=args.data_root,
        interactions_path=args.interactions,
        items_path=args.items,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        k_core=args.k_core,
        max_len=args.max_len,
        max_users=args.max_users,
    )


def _stats(args: argparse.Namespace) -> int:
    ds = _data_config(args).load()
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


def _train_sasrec(args: argparse.Namespace) -> int:
    from offline.sasrec import SasrecConfig, train_sasrec

    overrides: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "hidden",
            "n_layers",
            "n_heads",
            "dropout",
            "lr",
            "batch_size",
            "epochs",
            "patience",
            "seed",
            "threads",
            "device",
        )
        if getattr(args, k) is not None
    }
    config = SasrecConfig(data=_data_config(args), **overrides)
    out = args.out or Path("artifacts") / f"sasrec_{config.data.dataset or 'custom'}"
    doc = train_sasrec(config, out, resume=not args.no_resume)
    print(json.dumps({split: doc["metrics"][split]["overall"] for split in ("valid", "test")}, indent=2))
    print(f"results: {Path(out) / 'results.json'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from offline.checkpoint_eval import evaluate_generative_checkpoint, is_generative_checkpoint
    from offline.sasrec import evaluate_checkpoint, write_checkpoint_result
    from offline.training_utils import load_checkpoint

    if is_generative_checkpoint(load_checkpoint(args.checkpoint)):
        gen = evaluate_generative_checkpoint(
            args.checkpoint, dataset=args.dataset, codes_path=args.codes, reasoning_dir=args.reasoning,
            beam=args.beam, max_users=args.max_users)
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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `data`, `train sasrec` and `evaluate`."""
    data = subparsers.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", help="users / items / interactions / average length")
    _add_data_args(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON line")
    stats.set_defaults(func=_stats)

    train = get_or_add_subparsers(subparsers, "train", "train a model")
    sas = train.add_parser("sasrec", help="train the SASRec baseline (full-catalogue CE)")
    _add_data_args(sas, default_dataset="beauty")
    sas.add_argument("--out", type=Path, default=None, help="run folder (checkpoints, results.json)")
    sas.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt in --out")
    for name, typ in (
        ("hidden", int),
        ("n-layers", int),
        ("n-heads", int),
        ("dropout", float),
        ("lr", float),
        ("batch-size", int),
        ("epochs", int),
        ("patience", int),
        ("seed", int),
        ("threads", int),
        ("device", str),
    ):
        sas.add_argument(f"--{name}", type=typ, default=None)
    sas.set_defaults(func=_train_sasrec)

    ev = subparsers.add_parser("evaluate", help="re-evaluate a saved SASRec / TIGER / HSTU / SCoTER checkpoint")
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--out", type=Path, default=None, help="write a results JSON here")
    ev.add_argument("--dataset", default="beauty", help="generative checkpoints: the dataset it was trained on")
    ev.add_argument("--codes", type=Path, default=None,
                    help="generative checkpoints: semantic IDs .npz (default artifacts/<dataset>/semantic_ids_rqvae.npz)")
    ev.add_argument("--reasoning", type=Path, default=None, help="SCoTER checkpoints: the H folder")
    ev.add_argument("--beam", type=int, default=20)
    ev.add_argument("--max-users", type=int, default=None, help="first N users only")
    ev.set_defaults(func=_evaluate)


if (
    __name__ == "__main__"
):  # `python -m offline.data_cli ...`: these commands alone, without the other modules
    import logging
    import sys

    _parser = argparse.ArgumentParser(prog="offline.data_cli")
    register(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(_args.func(_args))
