"""The service must run in an image without torch: import and build the app with torch blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"torch is blocked in this test (import of {name})")
        return None

sys.meta_path.insert(0, BlockTorch())
import service.app, service.api, service.batcher, service.cli, service.experiments, service.metrics
import service.ranker, service.reasoning_fetch, service.serving, service.settings, service.srm
from service.app import create_app
from service.settings import ServiceSettings
app = create_app(ServiceSettings(bundle=sys.argv[1]))
assert "torch" not in sys.modules, "torch was imported"
from scoter.cli import build_parser
parser = build_parser()
args = parser.parse_args(["serve", "--bundle", sys.argv[1]])
assert args.func.__module__ == "service.cli"
print("OK no torch")
"""


def test_service_imports_and_builds_without_torch(bundle_dir):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OK no torch" in out.stdout
