"""Every stage's CLI module registers without torch (the service image has none): importing a stage's `cli.py`
must not pull torch in through its package."""

from __future__ import annotations

from tests.no_torch import run_without_torch

SCRIPT = r"""
import importlib
from scoter.cli import COMMAND_MODULES, build_parser
for name in COMMAND_MODULES:
    importlib.import_module(name)  # raises if a CLI module needs torch at import time
parser = build_parser()
commands = sorted(parser._subparsers._group_actions[0].choices)
train = sorted(parser._subparsers._group_actions[0].choices["train"]._scoter_sub.choices)
assert "torch" not in sys.modules
print(" ".join(commands), "|", " ".join(train))
"""


def test_every_command_registers_without_torch() -> None:
    out = run_without_torch(SCRIPT)
    assert out.returncode == 0, out.stderr
    commands, train = out.stdout.strip().split(" | ")
    assert {"data", "embed", "sid", "train", "reason", "llm", "ablate", "export", "serve", "evaluate",
            "demo"} <= set(commands.split())
    assert train.split() == ["hstu", "sasrec", "sasrec-sid", "scoter", "tiger"]
