"""Shared helpers for the deploy checks: repo paths, promtool, free loopback ports, Grafana variable expansion."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "scoter.json"
PROMTOOL_INSTALL = "apt-get update && apt-get install -y --no-install-recommends prometheus"

# What Grafana substitutes before a query reaches Prometheus; the values suit a 1 s scrape interval in tests.
GRAFANA_VARS = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "1m", "$variant": ".*"}


def expand_grafana(expr: str, variables: dict[str, str] | None = None) -> str:
    """Replace Grafana template variables (longest name first, so `$__range` never eats `$__rate_interval`)."""
    variables = variables or GRAFANA_VARS
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    if re.search(r"\$\w+", expr):
        raise AssertionError(f"unexpanded Grafana variable in {expr!r}")
    return expr


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every target of every panel, rows included."""
    dash = json.loads(path.read_text())
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))

    walk(dash["panels"])
    return out


def tool(name: str) -> str:
    """Path of a Prometheus binary, or skip naming the install command (CI installs it, see .ci/run)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed; install with: {PROMTOOL_INSTALL}")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return tool("prometheus")

