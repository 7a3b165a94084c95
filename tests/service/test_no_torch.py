"""The service must run in an image without torch: import and build the app with torch blocked."""

from __future__ import annotations

from tests.no_torch import run_without_torch

SCRIPT = r"""
import service.app, service.routes, service.schemas, service.batcher, service.cli, service.experiments, service.metrics
import scoter.ranker, service.reasoning_fetch, service.serving, service.settings, service.srm, service.state
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
    out = run_without_torch(SCRIPT, str(bundle_dir), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OK no torch" in out.stdout
