"""The Grafana dashboard and its provisioning: valid JSON with the panels operators need, every query parsed by
promtool (Grafana variables expanded as Grafana would), and every scoter metric/label it uses registered by the
service. That the queries return data from a real scrape is tested in test_live_scrape.py."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.deploy.conftest import DASHBOARD, DEPLOY, dashboard_queries, expand_grafana
from tests.deploy.promql import check_against_service

REQUIRED_PANELS = {
    "requests/s": "scoter_stage_seconds_count",
    "p50": "histogram_quantile(0.5,",
    "p95": "histogram_quantile(0.95,",
    "p99": "histogram_quantile(0.99,",
    "errors": "scoter_errors_total",
    "reasoning hit rate": 'scoter_reasoning_total{status="hit"',
    "batch size": "scoter_batch_size_bucket",
    "queue rejections": "scoter_rejections_total",
}


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    ds_uid = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"][0]["uid"]
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == ds_uid, f"panel {p['title']!r} uses another datasource"
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"variant"}


def test_dashboard_covers_required_views():
    exprs = "\n".join(e for _, e in dashboard_queries())
    for view, needle in REQUIRED_PANELS.items():
        assert needle in exprs, f"no panel shows {view} (expected a query containing {needle!r})"
    titles = " ".join(t for t, _ in dashboard_queries()).lower()
    assert "variant" in titles and "stage" in titles


def test_dashboard_provider_points_at_the_dashboard_mount():
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/scoter.yml").read_text())["providers"][0]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = {v.split(":")[0]: v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_every_query_parses_with_promtool(promtool, tmp_path):
    """Each expression becomes a recording rule; `promtool check rules` parses all of them."""
    rules = [{"record": f"dashboard:q{i}", "expr": expand_grafana(e)} for i, (_, e) in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout


def test_dashboard_metrics_exist_in_the_service():
    check_against_service([e for _, e in dashboard_queries()])


@pytest.mark.parametrize("expr", ["sum(rate(scoter_request_total[1m]))", 'scoter_reasoning_total{state="hit"}',
                                  "sum by (tenant) (rate(scoter_errors_total[1m]))"])
def test_metric_cross_check_rejects_unknown_names(expr):
    with pytest.raises(AssertionError):
        check_against_service([expr])
