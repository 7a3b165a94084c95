"""Kubernetes manifests validated against the Kubernetes OpenAPI schemas (kubernetes-validate ships them, strict
mode rejects unknown fields), plus the wiring a schema cannot see: selectors match, probes hit the service's
endpoints, the experiments ConfigMap is a valid experiments file, the kustomization lists every manifest."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.experiments import ExperimentsConfig
from service.settings import ServiceSettings
from tests.deploy.conftest import DEPLOY

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"  # oldest version we promise to run on; strict schemas of that release


def manifests() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def by_kind(kind: str) -> dict:
    found = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(found) >= 1, f"no {kind} manifest"
    return found[0]


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_manifests_match_kubernetes_schemas(version):
    kinds = set()
    for path, doc in manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "PodDisruptionBudget"} <= kinds


def test_strict_validation_rejects_a_typo():
    """The validator is not vacuous: a misspelt field fails."""
    doc = by_kind("Deployment")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_deployment_wiring():
    dep, svc, hpa, pdb = (by_kind(k) for k in ("Deployment", "Service", "HorizontalPodAutoscaler",
                                               "PodDisruptionBudget"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (dep["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
                     pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2, "the PDB needs two pods to allow a voluntary disruption"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["lifecycle"]["preStop"], "needs a preStop drain"
    pre_stop_s = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop_s + 10
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    env = by_kind("ConfigMap")["data"]
    assert int(env["SCOTER_PORT"]) == port
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert c["args"] == ["--experiments", f"{mounts['experiments']}/experiments.yaml"]


def test_env_configmap_is_valid_service_settings(monkeypatch):
    """Every SCOTER_* key is a real setting and the values parse (the pod would otherwise crash-loop)."""
    env = next(doc for _, doc in manifests() if doc["metadata"]["name"] == "scoter-env")["data"]
    known = {f"SCOTER_{name.upper()}" for name in ServiceSettings.model_fields}
    assert set(env) <= known, f"unknown settings: {sorted(set(env) - known)}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ServiceSettings(experiments=Path("/config/experiments.yaml"))
    assert settings.port == int(env["SCOTER_PORT"]) and settings.host == "0.0.0.0"


@pytest.mark.parametrize("source", ["configmap", "compose-example"])
def test_experiments_files_are_valid(source):
    if source == "configmap":
        text = next(doc for _, doc in manifests() if doc["metadata"]["name"] == "scoter-experiments")["data"][
            "experiments.yaml"]
    else:
        text = (DEPLOY / "experiments.example.yaml").read_text()
    cfg = ExperimentsConfig.model_validate(yaml.safe_load(text))
    assert all(str(p).startswith("/bundles/") for p in cfg.bundle_paths().values())


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    image = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0]
    assert image in {i["name"] for i in kust["images"]}
