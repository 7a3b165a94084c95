"""The deploy stack end to end on loopback, with real processes only:

1. the service started exactly as the image starts it (Dockerfile ENTRYPOINT + CMD, the image's env, the
   experiments file where the volume would mount it) against real bundles and the real Redis, and the image's
   HEALTHCHECK command run against it;
2. the Debian `prometheus` binary loading deploy/prometheus/prometheus.yml (targets and intervals rewritten for
   loopback) with its alert rules, scraping that service while requests flow;
3. every dashboard query answered by that Prometheus with data. A query may come back empty only when every
   scoter metric it reads has no samples in the service's own /metrics (that event never happened, e.g. no
   internal error), which the test checks rather than assumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import yaml
from dockerfile_parse import DockerfileParser

from model_export.testing import build_bundle, item_ids
from scoter.reasoning_store import encode, reasoning_key
from scoter.testing import free_port
from service.experiments import load_config
from tests.deploy.conftest import DEPLOY, REPO, dashboard_queries, expand_grafana

REDIS_URL = os.environ.get("SCOTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SCRAPE_S = 1
N_ITEMS, K, D = 50, 3, 8


def wait_for(check, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `check()` until it returns a truthy value; fail naming `what` (and the process log) on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{log.read_text()[-4000:] if log else ''}")
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError, KeyError, IndexError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what} (last error: {last})\n"
                f"{log.read_text()[-4000:] if log else ''}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started (SIGTERM, then SIGKILL after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def image_command() -> tuple[list[str], dict[str, str], str]:
    """(argv, env, healthcheck python code) as the Dockerfile's runtime stage defines them."""
    parser = DockerfileParser(str(REPO / "Dockerfile"))
    entry = cmd = health = None
    env: dict[str, str] = {}
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            env = {}
        elif ins["instruction"] == "ENTRYPOINT":
            entry = json.loads(ins["value"])
        elif ins["instruction"] == "CMD":
            cmd = json.loads(ins["value"])
        elif ins["instruction"] == "HEALTHCHECK":
            health = json.loads(ins["value"].split("CMD", 1)[1])
        elif ins["instruction"] == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", ins["value"]))
    assert entry and cmd and health, "Dockerfile needs ENTRYPOINT, CMD and HEALTHCHECK"
    assert health[:2] == ["python", "-c"]
    return entry + cmd, {k: v for k, v in env.items() if k.startswith("SCOTER_")}, health[2]


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[dict]:
    """The service as the container runs it: `scoter serve --experiments /config/experiments.yaml`."""
    tmp = tmp_path_factory.mktemp("deploy_live")
    config = tmp / "config" / "experiments.yaml"
    config.parent.mkdir()
    example = yaml.safe_load((DEPLOY / "experiments.example.yaml").read_text())
    bundles = sorted({v["bundle"] for e in example["experiments"] for v in e["variants"] if v.get("bundle")})
    for seed, mounted in enumerate(bundles, 1):  # one real bundle where the /bundles volume would hold each
        assert mounted.startswith("/bundles/"), mounted
        build_bundle(tmp / mounted.lstrip("/"), n_items=N_ITEMS, k=K, d_reason=D, seed=seed, model_version=str(seed))
    for variant in (v for e in example["experiments"] for v in e["variants"] if v.get("bundle")):
        variant["bundle"] = str(tmp / variant["bundle"].lstrip("/"))
    config.write_text(yaml.safe_dump(example))

    argv, image_env, health = image_command()
    assert argv[0] == "scoter", "the image's entry point is the `scoter` console script"
    argv = [sys.executable, "-m", "scoter.cli", *argv[1:]]  # the same main() the console script runs
    argv = [str(config) if a == "/config/experiments.yaml" else a for a in argv]
    port = free_port()
    reasoning_version = f"deploytest-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **image_env, "SCOTER_PORT": str(port), "SCOTER_HOST": "127.0.0.1",
           "SCOTER_REDIS_URL": REDIS_URL, "SCOTER_REASONING_VERSION": reasoning_version,
           "SCOTER_QUEUE_CAPACITY": "4", "SCOTER_MAX_BATCH": "4", "SCOTER_MAX_WAIT_MS": "5",
           # generous store timeouts: this test is about metrics, and the 2-core CI box is shared
           "SCOTER_REDIS_SOCKET_TIMEOUT_S": "0.5", "SCOTER_REDIS_CONNECT_TIMEOUT_S": "0.5",
           "SCOTER_REDIS_DEADLINE_MS": "500",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # reasoning for half of the users, so the hit rate is between 0 and 1
    r = redis.Redis.from_url(REDIS_URL)
    users = [f"u{i:03d}" for i in range(40)]
    rng = np.random.default_rng(0)
    keys = [reasoning_key(reasoning_version, u) for u in users[::2]]
    r.mset({key: encode(rng.normal(size=(K, D)).astype(np.float32)) for key in keys})

    log = tmp / "service.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 90, "service /readyz",
                 proc, log)
        assigner = load_config(config).assigner  # the service's own assignment: which variant serves each user
        yield {"url": url, "port": port, "health": health, "env": env, "users": users, "config": config,
               "experiment": example["experiments"][0]["key"],
               "variants": {assigner.assign(u).variant for u in users},
               "active_variants": {v["name"] for v in example["experiments"][0]["variants"]}}
    finally:
        stop(proc)
        r.delete(*keys)
        r.close()


def test_image_healthcheck_passes_against_the_entry_point(service):
    proc = subprocess.run([sys.executable, "-c", service["health"]], env=service["env"], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert httpx.get(f"{service['url']}/healthz", timeout=2).json() == {"status": "ok"}


def test_image_healthcheck_fails_when_nothing_listens(service):
    env = {**service["env"], "SCOTER_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-c", service["health"]], env=env, capture_output=True, timeout=10)
    assert proc.returncode != 0


async def _traffic(url: str, users: list[str], seconds: float) -> dict[int, int]:
    """Concurrent bursts of recommendation requests (bursts overflow the small queue: some 429s)."""
    items = item_ids(N_ITEMS)
    codes: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            batch = [client.post("/v1/recommendations", json={
                "user_id": users[(i + j) % len(users)], "k": 5,
                "history": [items[(i + j * 7 + s) % N_ITEMS] for s in range(4)]}) for j in range(24)]
            for resp in await asyncio.gather(*batch):
                codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
            i += 24
            await asyncio.sleep(0.25)
    return codes


@pytest.fixture(scope="module")
def prometheus(service, prometheus_bin, tmp_path_factory) -> Iterator[str]:
    """The shipped prometheus.yml + alerts.yml, pointed at the loopback service, run by the real binary."""
    binary = prometheus_bin
    tmp = tmp_path_factory.mktemp("prometheus")
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in cfg["rule_files"]]
    scoter_job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "scoter")
    scoter_job["scrape_interval"] = f"{SCRAPE_S}s"
    scoter_job["static_configs"][0]["targets"] = [f"127.0.0.1:{service['port']}"]
    cfg["scrape_configs"] = [scoter_job]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 60, "prometheus ready",
                 proc, log)
        yield url
    finally:
        stop(proc)


def base(metric: str) -> str:
    """Metric family name without the sample suffix (_total, _bucket, _count, _sum)."""
    return re.sub(r"_(total|bucket|count|sum)$", "", metric)


def query(prom: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_prometheus_scrapes_the_service_and_dashboard_queries_return_data(service, prometheus):
    wait_for(lambda: [s for s in query(prometheus, 'up{job="scoter"}') if s["value"][1] == "1"], 30,
             "scoter target up")
    codes = asyncio.run(_traffic(service["url"], service["users"], seconds=4.0))
    assert codes.get(200, 0) > 0, codes
    served = httpx.get(f"{service['url']}/metrics", timeout=5).text
    total = sum(float(v) for v in re.findall(r'^scoter_stage_seconds_count\{stage="total"[^}]*\} (\S+)$',
                                             served, re.M))
    assert total == codes[200], f"service counted {total} completed requests, the client saw {codes}"
    # wait until Prometheus has scraped the final counts (then the [15s] windows cover the traffic)
    wait_for(lambda: query(prometheus, 'sum(scoter_stage_seconds_count{stage="total"})')[0]["value"][1]
             == f"{total:g}", 20, "Prometheus to scrape the final request count")

    empty = []
    for title, expr in dashboard_queries():
        if not query(prometheus, expand_grafana(expr)):
            empty.append((title, expr))
    never_happened = {base(name) for name in re.findall(r"^# TYPE (scoter_\w+)", served, re.M)
                      if not re.search(rf"^{base(name)}(_total|_bucket|_count)?[{{ ]", served, re.M)}
    for title, expr in empty:
        used = {base(name) for name in re.findall(r"\b(scoter_\w+)", expr)}
        assert used and used <= never_happened, (
            f"panel {title!r}: {expr!r} returned no data although its metrics have samples; "
            f"no-sample metrics: {sorted(never_happened)}")
    print("empty dashboard queries (events that never happened):", empty)
    assert len(empty) <= 2, f"too many empty panels: {empty}"
    # per-variant latency really is per variant and per stage
    stages = query(prometheus, expand_grafana(
        'histogram_quantile(0.99, sum by (le, variant, stage) (rate(scoter_stage_seconds_bucket[$__rate_interval])))'))
    assert {s["metric"]["variant"] for s in stages} == service["variants"] and len(service["variants"]) > 1
    assert {"queue", "redis", "inference", "total"} <= {s["metric"]["stage"] for s in stages}
    hit = query(prometheus, 'sum(rate(scoter_reasoning_total{status="hit"}[30s])) / sum(rate(scoter_reasoning_total[30s]))')
    assert 0.0 < float(hit[0]["value"][1]) < 1.0, "half of the users have reasoning published"


def test_alert_rules_load_and_evaluate(service, prometheus):
    def rules() -> list[dict]:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        found = [r for g in groups for r in g["rules"]]
        return found if found and all(r.get("lastEvaluation", "").startswith("20") for r in found) else []

    loaded = wait_for(rules, 20, "alert rules evaluated")
    shipped = [r for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
               for r in g["rules"]]
    assert len(loaded) == len(shipped)
    bad = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not bad, bad
    firing = [r["name"] for r in loaded if r.get("state") == "firing"]
    assert "ScoterTargetDown" not in firing and "ScoterRedisDegraded" not in firing


def test_srm_check_reads_the_live_exposures(service):
    """The A/B workflow in docs/OPERATIONS.md: `scoter ab srm` against the running service's /metrics."""
    asyncio.run(_traffic(service["url"], service["users"], seconds=0.5))  # exposures, if run on its own
    proc = subprocess.run(
        [sys.executable, "-m", "scoter.cli", "ab", "srm", "--metrics-url", f"{service['url']}/metrics",
         "--experiments", str(service["config"])],
        capture_output=True, text=True, timeout=30, env={**service["env"]}, cwd=REPO)
    assert proc.returncode in (0, 1), proc.stderr
    result = json.loads(proc.stdout)
    assert result["experiment"] == service["experiment"]
    assert set(result["counts"]) == service["active_variants"] and sum(result["counts"].values()) > 0
