"""A/B serving: variant on every response and metric, QA override with the admin token, exposures,
atomic config reload (HTTP and SIGHUP) logged with the file's hash."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_export.testing import build_bundle
from service.experiments import assign, load_config
from tests.service.conftest import make_settings, serve


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory, reasoning_version) -> Path:
    path = tmp_path_factory.mktemp("bundles2") / "tiny-v2"
    build_bundle(path, seed=7, model_version="2", reasoning_version=reasoning_version)
    return path


def _write(path: Path, control: Path, treatment: Path, weights=(0.5, 0.5), seed="s1", status="running") -> Path:
    path.write_text(json.dumps({"experiments": [{
        "key": "scoter-ab", "seed": seed, "status": status, "variants": [
            {"name": "control", "weight": weights[0], "bundle": str(control)},
            {"name": "scoter", "weight": weights[1], "bundle": str(treatment)}]}]}))
    return path


def _exposures(text: str) -> dict[str, float]:
    return {s.labels["variant"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "scoter_exposures_total"}


async def test_split_follows_assignment_and_counts_exposures(tmp_path, bundle_dir, second_bundle):
    cfg = _write(tmp_path / "exp.json", bundle_dir, second_bundle)
    exp = load_config(cfg).config.active
    users = [f"ab-user-{i}" for i in range(40)]
    async with serve(make_settings(experiments=cfg, redis_url="redis://127.0.0.1:6379/0")) as client:
        rs = [await client.post("/v1/recommendations", json={"user_id": u, "history": ["I00002"], "k": 3})
              for u in users]
        again = await client.post("/v1/recommendations", json={"user_id": users[0], "history": ["I00002"], "k": 3})
        text = (await client.get("/metrics")).text
        models = (await client.get("/v1/models")).json()
    got = [r.json() for r in rs]
    assert [g["variant"] for g in got] == [assign(exp, u).variant for u in users]
    assert all(g["in_experiment"] and g["experiment"] == "scoter-ab" for g in got)
    assert {g["variant"]: g["model_version"] for g in got} == {"control": "1", "scoter": "2"}
    assert again.json()["variant"] == got[0]["variant"]  # sticky
    counts = Counter(g["variant"] for g in got)
    exposures = _exposures(text)
    assert exposures["control"] == counts["control"] + (again.json()["variant"] == "control")
    assert exposures["scoter"] == counts["scoter"] + (again.json()["variant"] == "scoter")
    variants_in_stage = {s.labels["variant"] for fam in text_string_to_metric_families(text) for s in fam.samples
                         if s.name == "scoter_stage_seconds_count"}
    assert variants_in_stage == {"control", "scoter"}
    assert {v["variant"]: v["weight"] for v in models["variants"]} == {"control": 0.5, "scoter": 0.5}
    assert models["experiments"]["experiments"][0]["key"] == "scoter-ab"


async def test_qa_override_needs_the_admin_token(tmp_path, bundle_dir, second_bundle):
    cfg = _write(tmp_path / "exp.json", bundle_dir, second_bundle, weights=(1.0, 0.0))
    body = {"user_id": "qa-user", "history": ["I00002"], "k": 3}
    async with serve(make_settings(experiments=cfg)) as client:
        normal = await client.post("/v1/recommendations", json=body)
        forced = await client.post("/v1/recommendations", json=body, headers={
            "X-Scoter-Variant": "scoter", "X-Scoter-Admin-Token": "s3cret"})
        no_token = await client.post("/v1/recommendations", json=body, headers={"X-Scoter-Variant": "scoter"})
        bad_token = await client.post("/v1/recommendations", json=body, headers={
            "X-Scoter-Variant": "scoter", "X-Scoter-Admin-Token": "guess"})
        unknown = await client.post("/v1/recommendations", json=body, headers={
            "X-Scoter-Variant": "nope", "X-Scoter-Admin-Token": "s3cret"})
        batch = await client.post("/v1/recommendations:batch", json={"requests": [body, {**body, "user_id": "b2"}]},
                                  headers={"X-Scoter-Variant": "scoter", "X-Scoter-Admin-Token": "s3cret"})
        batch_no_token = await client.post("/v1/recommendations:batch", json={"requests": [body]},
                                           headers={"X-Scoter-Variant": "scoter"})
        docs = (await client.get("/openapi.json")).json()
        text = (await client.get("/metrics")).text
    assert normal.json()["variant"] == "control"
    assert forced.status_code == 200 and forced.json()["variant"] == "scoter" and forced.json()["forced"]
    assert forced.json()["model_version"] == "2"
    assert no_token.status_code == 403 and bad_token.status_code == 403
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["header", "X-Scoter-Variant"]
    assert [r["variant"] for r in batch.json()["results"]] == ["scoter", "scoter"]
    assert all(r["forced"] for r in batch.json()["results"]) and batch_no_token.status_code == 403
    for route in ("/v1/recommendations", "/v1/recommendations:batch"):  # read from request.headers, still documented
        params = {(p["name"], p["in"]) for p in docs["paths"][route]["post"]["parameters"]}
        assert {("X-Scoter-Variant", "header"), ("X-Scoter-Admin-Token", "header"), ("X-Request-ID", "header")} <= params
    assert _exposures(text) == {"control": 1.0}  # forced requests are not exposures


async def test_reload_is_atomic_logged_and_bad_config_keeps_the_old(tmp_path, bundle_dir, second_bundle, caplog):
    cfg = _write(tmp_path / "exp.json", bundle_dir, second_bundle, weights=(1.0, 0.0))
    body = {"user_id": "reload-user", "history": ["I00002"], "k": 3}
    async with serve(make_settings(experiments=cfg)) as client:
        v1 = (await client.get("/v1/models")).json()["config_version"]
        assert (await client.post("/v1/recommendations", json=body)).json()["variant"] == "control"
        assert (await client.post("/admin/reload")).status_code == 403
        _write(cfg, bundle_dir, second_bundle, weights=(0.0, 1.0))
        # requests racing the reload each see one whole config (old or new), never an error
        racing = [client.post("/v1/recommendations", json=body) for _ in range(10)]
        with caplog.at_level(logging.INFO, logger="service.serving"):
            results = await asyncio.gather(client.post("/admin/reload", headers={"X-Scoter-Admin-Token": "s3cret"}),
                                           *racing)
        reload_resp, raced = results[0], results[1:]
        assert reload_resp.status_code == 200, reload_resp.text
        v2 = reload_resp.json()["config_version"]
        assert v2 != v1 and any(v2 in rec.getMessage() for rec in caplog.records)
        assert all(r.status_code == 200 and r.json()["config_version"] in {v1, v2} for r in raced)
        after = (await client.post("/v1/recommendations", json=body)).json()
        assert after["variant"] == "scoter" and after["config_version"] == v2
        cfg.write_text("{this is not json")
        bad = await client.post("/admin/reload", headers={"X-Scoter-Admin-Token": "s3cret"})
        assert bad.status_code == 400 and "not valid" in bad.json()["detail"]
        still = (await client.post("/v1/recommendations", json=body)).json()
        assert still["variant"] == "scoter" and still["config_version"] == v2


async def test_sighup_reloads(tmp_path, bundle_dir, second_bundle):
    cfg = _write(tmp_path / "exp.json", bundle_dir, second_bundle, weights=(1.0, 0.0))
    async with serve(make_settings(experiments=cfg, reload_on_sighup=True)) as client:
        v1 = (await client.get("/v1/models")).json()["config_version"]
        _write(cfg, bundle_dir, second_bundle, weights=(0.0, 1.0))
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            await asyncio.sleep(0.02)
            models = (await client.get("/v1/models")).json()
            if models["config_version"] != v1:
                break
        assert models["config_version"] != v1
        r = await client.post("/v1/recommendations", json={"user_id": "hup", "history": ["I00002"], "k": 2})
    assert r.json()["variant"] == "scoter"


async def test_reload_to_another_bundle_drains_the_old_one(tmp_path, bundle_dir, second_bundle):
    cfg = _write(tmp_path / "exp.json", bundle_dir, bundle_dir, weights=(1.0, 0.0))
    body = {"user_id": "swap-user", "history": ["I00002"], "k": 3}
    async with serve(make_settings(experiments=cfg)) as client:
        assert (await client.post("/v1/recommendations", json=body)).json()["model_version"] == "1"
        _write(cfg, second_bundle, second_bundle, weights=(1.0, 0.0))
        results = await asyncio.gather(
            client.post("/admin/reload", headers={"X-Scoter-Admin-Token": "s3cret"}),
            *(client.post("/v1/recommendations", json=body) for _ in range(20)))
        assert all(r.status_code == 200 for r in results), [r.status_code for r in results]
        assert {r.json()["model_version"] for r in results[1:]} <= {"1", "2"}
        after = await client.post("/v1/recommendations", json=body)
        models = (await client.get("/v1/models")).json()
        text = (await client.get("/metrics")).text
    assert after.json()["model_version"] == "2"
    assert {v["model_version"] for v in models["variants"]} == {"2"}
    info = [s.labels for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "scoter_model_info"]
    assert {lab["model_version"] for lab in info} == {"2"}
