"""Run a snippet in a fresh interpreter with torch blocked (the service image has no torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TORCH = r"""
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"torch is blocked in this test (import of {name})")
        return None

sys.meta_path.insert(0, BlockTorch())
"""


def run_without_torch(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c BLOCK_TORCH + code args...` from the repository root."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
