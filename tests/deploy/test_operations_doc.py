"""docs/OPERATIONS.md and the deploy files stay in step with the service: every setting documented with its real
default, no documented or deployed SCOTER_* name that the service does not read, every alert explained."""

from __future__ import annotations

import re

import yaml

from service.settings import ServiceSettings
from tests.deploy.conftest import DEPLOY, REPO

DOC = REPO / "docs" / "OPERATIONS.md"


def table_rows() -> dict[str, str]:
    """`SCOTER_X` -> default cell, from the configuration table."""
    rows = re.findall(r"^\| `(SCOTER_\w+)` \| ([^|]+) \|", DOC.read_text(), re.M)
    return {name: default.strip().strip("`") for name, default in rows}


def documented_default(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_every_setting_is_documented_with_its_default():
    rows = table_rows()
    for name, field in ServiceSettings.model_fields.items():
        var = f"SCOTER_{name.upper()}"
        assert var in rows, f"{var} missing from the configuration table in {DOC.name}"
        assert rows[var] == documented_default(field.default), f"{var}: doc says {rows[var]!r}, code {field.default!r}"


def test_no_unknown_setting_names_in_docs_or_deploy_files():
    known = {f"SCOTER_{n.upper()}" for n in ServiceSettings.model_fields}
    sources = [DOC, REPO / "Dockerfile", DEPLOY / "docker-compose.yml", *(DEPLOY / "k8s").glob("*.yaml")]
    for path in sources:
        used = set(re.findall(r"\bSCOTER_[A-Z_]+[A-Z]\b", path.read_text()))
        # compose-only variables (image tag, host paths) are interpolated by docker compose, not read by scoter
        used -= {"SCOTER_TAG", "SCOTER_BUNDLES_DIR", "SCOTER_EXPERIMENTS_FILE", "SCOTER_TEST_REDIS_URL"}
        assert used <= known, f"{path.relative_to(REPO)} uses unknown settings {sorted(used - known)}"


def test_compose_service_env_is_valid(monkeypatch):
    env = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["scoter"]["environment"]
    for key, value in env.items():
        # ${VAR:-default} -> default, as docker compose would interpolate with the variable unset
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
        if value:
            monkeypatch.setenv(key, value)
    assert ServiceSettings(experiments="/config/experiments.yaml").host == "0.0.0.0"


def test_every_alert_is_explained():
    text = DOC.read_text()
    alerts = [r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r]
    missing = [a for a in alerts if f"`{a}`" not in text]
    assert not missing, f"alerts not described in {DOC.name}: {missing}"
