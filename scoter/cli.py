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
    "offline.data.cli",  # scoter data ...
    "offline.semantic_ids.cli",  # scoter embed, scoter sid ...
    "offline.baselines.cli",  # scoter train sasrec
    "offline.backbones.cli",  # scoter train tiger|hstu
    "offline.reasoning.cli",  # scoter reason discover|distill|encode|publish, scoter llm serve
    "offline.fusion.cli",  # scoter train scoter, scoter ablate ...
    "model_export.cli",  # scoter export, scoter export verify
    "service.cli",  # scoter serve, scoter ab srm
    "offline.pipeline.cli",  # scoter evaluate, scoter demo
]


# Loggers that report progress at INFO by default; everything else (onnxruntime's quantiser, httpx, ...) is
# shown from WARNING up unless `-v` asks for all of it.
PROJECT_LOGGERS = ("scoter", "offline", "model_export", "service", "benchmarks", "__main__")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` names every option's default (None/False defaults stay unsaid: they mean 'off' or 'derived',
    which the option's own help explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "%(default)" in text or "default" in text.lower()
                or action.default is None or action.default is False or action.default == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".strip()


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and every sub-parser below it the defaults-naming formatter."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if action.help is None and action.option_strings and action.default is not None and action.default is not False:
            action.help = "(default: %(default)s)"
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                show_defaults(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoter", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, including third-party libraries (default: progress of scoter's own stages)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an extra that is not installed (e.g. no torch in the service image)
            logging.getLogger(__name__).debug("commands from %s unavailable: %s", name, exc)
            continue
        module.register(sub)
    show_defaults(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for name in PROJECT_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input: a clear message, not a traceback
        print(f"scoter {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
