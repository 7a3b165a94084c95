"""`scoter train scoter` and `scoter ablate` refuse to run without a real H folder, before loading anything."""

from __future__ import annotations

import pytest

from scoter.cli import main


@pytest.mark.parametrize("command", [["train", "scoter"], ["ablate"]])
def test_missing_reasoning_is_a_clear_error(command: list[str], capsys) -> None:
    assert main([*command, "--backbone", "hstu", "--dataset", "beauty"]) == 2
    err = capsys.readouterr().err
    assert "--reasoning: required" in err and "scoter reason distill" in err
