"""The `scoter` command. Each component registers its own sub-commands; imports are lazy so that
`scoter serve` never imports torch."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module path -> it must define `register(subparsers)`; each registers one or more sub-commands.
# A module that does not exist yet (or whose extra is not installed) is skipped.
COMMAND_MODULES: list[str] = [
    "offline.data_cli",  # scoter data ..., scoter train sasrec, scoter evaluate
    "offline.semantic_ids_cli",  # scoter embed, scoter sid ...
    "offline.backbones_cli",  # scoter train tiger|hstu, scoter rank ...
    "offline.reasoning_cli",  # scoter reason discover|distill|encode|publish, scoter llm serve
    "offline.fusion_cli",  # scoter train scoter, scoter ablate ...
    "model_export.cli",  # scoter export, scoter export verify
    "service.cli",  # scoter serve, scoter ab srm
    "offline.demo_cli",  # scoter demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoter", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an extra that is not installed (e.g. no torch in the service image)
            logging.getLogger(__name__).debug("commands from %s unavailable: %s", name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input: a clear message, not a traceback
        print(f"scoter {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
