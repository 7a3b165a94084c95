"""CLI: `scoter train sasrec` (the reference baseline). No torch at import time; the model is imported inside the
handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from offline.cli_common import NO_SUB_WINDOWS_HELP, add_data_args, data_config, get_or_add_subparsers
from scoter.io import describe_output
from scoter.paths import artifacts_root

_FLAGS: tuple[tuple[str, type], ...] = (
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
)


def _help_with_defaults(parser: argparse.ArgumentParser) -> None:
    """`--help` names SasrecConfig's defaults; read when help is printed, since the config module imports torch."""
    plain = parser.format_help

    def format_help() -> str:
        try:
            from offline.baselines.sasrec import SasrecConfig
        except ImportError:  # no torch: the help still prints, without the values
            return plain()
        fields = SasrecConfig.model_fields
        for action in parser._actions:
            field = fields.get(action.dest)
            if field is not None and action.default is None and "default" not in (action.help or ""):
                action.help = f"{action.help or ''} (default: {field.default})".strip()
        return plain()

    parser.format_help = format_help  # type: ignore[method-assign]


def _train_sasrec(args: argparse.Namespace) -> int:
    from offline.baselines.sasrec import SasrecConfig, train_sasrec

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
            "time_budget_s",
        )
        if getattr(args, k) is not None
    }
    if args.per_prefix:
        overrides["all_positions"] = False
    if args.no_sub_windows:
        overrides["sub_windows"] = False
    config = SasrecConfig(data=data_config(args), **overrides)
    name = config.data.dataset or config.data.name or Path(config.data.interactions_path).stem
    out = args.out or artifacts_root() / name / "sasrec"
    doc = train_sasrec(config, out, resume=not args.no_resume)
    if not doc:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(json.dumps({split: doc["metrics"][split]["overall"] for split in ("valid", "test")}, indent=2))
    print(f"results: {Path(out) / 'results.json'}; run folder: {describe_output(Path(out))}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `train sasrec`."""
    train = get_or_add_subparsers(subparsers, "train", "train a model")
    sas = train.add_parser("sasrec", help="train the SASRec baseline (full-catalogue CE)")
    add_data_args(sas)
    sas.add_argument("--out", type=Path, default=None,
                     help="run folder: checkpoints, results.json (default: $SCOTER_ARTIFACTS/<dataset>/sasrec)")
    sas.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt in --out")
    for name, typ in _FLAGS:
        sas.add_argument(f"--{name}", type=typ, default=None)
    sas.add_argument("--time-budget", dest="time_budget_s", type=float, default=None,
                     help="stop training after this many seconds (a resumed run continues the budget)")
    sas.add_argument("--per-prefix", action="store_true",
                     help="one training row per history prefix instead of all positions of each user's sequence")
    sas.add_argument("--no-sub-windows", action="store_true", help=NO_SUB_WINDOWS_HELP)
    sas.set_defaults(func=_train_sasrec)
    _help_with_defaults(sas)
