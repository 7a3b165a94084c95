"""promtool checks of the shipped Prometheus config and alert rules, the alert unit tests, and that every metric
and label the rules use exists in the service's real metrics registry."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import check_against_service

PROM = DEPLOY / "prometheus"


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=PROM)


def test_promtool_check_config(promtool):
    proc = run([promtool, "check", "config", "prometheus.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_check_rules(promtool):
    proc = run([promtool, "check", "rules", "alerts.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_required_alerts_present():
    rules = [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"ScoterHighP99Latency", "ScoterHighErrorRate", "ScoterReasoningMissRate", "ScoterRedisDegraded"} <= alerts
    for r in rules:
        if "alert" in r:
            assert r["labels"]["severity"] in {"page", "ticket"} and r["annotations"]["summary"], r["alert"]


def test_alert_unit_tests_fire_and_stay_quiet(promtool):
    """alerts_test.yml drives each alert with synthetic series (firing and non-firing cases)."""
    proc = run([promtool, "test", "rules", "alerts_test.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {t["alertname"] for c in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
              for t in c.get("alert_rule_test", [])}
    rules = [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules if "alert" in r} == tested, "every alert needs a unit test"


def test_a_broken_rule_is_rejected(promtool, tmp_path):
    """promtool really parses expressions (guards the checks above against passing vacuously)."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum by (le (rate(x[5m]))\n")
    proc = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def test_rule_metrics_exist_in_the_service():
    exprs = [r["expr"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    check_against_service(exprs)
