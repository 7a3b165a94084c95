"""Every `--help` names its defaults, and no command outside the demo defaults to a dataset."""

from __future__ import annotations

import argparse

import pytest

from scoter.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_page_names_each_default() -> None:
    missing = []
    for path, parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            shown = f"{action.default}"
            if f"default: {shown}" not in text and "default" not in (action.help or ""):
                missing.append(f"scoter {' '.join(path)} {action.option_strings[-1]}")
    assert not missing, missing


@pytest.mark.parametrize("argv", [
    ["train", "hstu"], ["train", "tiger"], ["train", "scoter", "--backbone", "hstu", "--reasoning", "x"],
    ["reason", "discover"], ["reason", "distill"], ["reason", "encode", "--student", "s.pt", "--out", "o"],
])
def test_no_dataset_default(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--dataset" in capsys.readouterr().err


def test_sasrec_without_data_is_a_clear_error(capsys) -> None:
    assert main(["train", "sasrec"]) == 2
    assert "--dataset NAME or --interactions PATH" in capsys.readouterr().err
