"""Service latency benchmark: uvicorn (separate process) + real Redis + a bundle, load from httpx (one process).

Default mode `open`: an open-loop load generator. Requests are sent on a fixed schedule (Poisson or constant
rate) and each latency is measured from the request's *intended* send time, so queueing in the client or the
server is not hidden (no coordinated omission). Steps through rising rates and reports per rate: achieved
throughput, p50/p95/p99, error rate (non-2xx or transport error), and the server's own per-stage breakdown
(queue, redis, inference, total) from its Prometheus histograms, diffed between /metrics scrapes taken before
and after the step. Also: service overhead at low load (total - inference, as a share of inference), Redis
fetch p99, and a Redis-down run (store URL pointing at a closed port). Writes benchmarks/results/service.json.

Mode `closed`: the older fixed-concurrency run (hit / miss / redis_down scenarios), written to
benchmarks/results/service_latency.json.

    PYTHONPATH=. python benchmarks/service_latency.py                  # tiny fixture bundle, fixture users
    PYTHONPATH=. python benchmarks/service_latency.py --bundle artifacts/demo/bundles/scoter-hstu \
        --users 1-2000 --reasoning-version demo-v1                      # real bundle, H already in Redis
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoter.bundle import load_bundle  # noqa: E402
from scoter.io import write_json_atomic  # noqa: E402
from scoter.provenance import git_commit  # noqa: E402
from scoter.reasoning_store import encode, reasoning_key  # noqa: E402

log = logging.getLogger("service_latency")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, env_extra: dict[str, str], port: int, workers: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra}
    cmd = [sys.executable, "-m", "scoter.cli", "serve", "--bundle", str(bundle), "--port", str(port),
           "--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def load(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], dict[int, int], float]:
    """Send every body with at most `concurrency` in flight; returns latencies (s), status counts, wall time."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post("/v1/recommendations", json=body)
                latencies.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, codes, wall


def server_stats(url: str) -> dict:
    """Mean of each stage histogram and of the batch size, from the server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    reasoning: dict[str, float] = {}
    errors: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("scoter_stage_seconds_sum", "scoter_stage_seconds_count"):
                key = s.labels["stage"]
                (sums if s.name.endswith("_sum") else counts)[key] = (
                    (sums if s.name.endswith("_sum") else counts).get(key, 0) + s.value)
            elif s.name in ("scoter_batch_size_sum", "scoter_batch_size_count"):
                key = "batch_size"
                (sums if s.name.endswith("_sum") else counts)[key] = s.value
            elif s.name == "scoter_errors_total":
                errors[s.labels["kind"]] = errors.get(s.labels["kind"], 0) + s.value
            elif s.name == "scoter_reasoning_total":
                reasoning[s.labels["status"]] = reasoning.get(s.labels["status"], 0) + s.value
    means = {f"mean_{k}_ms" if k != "batch_size" else "mean_batch_size":
             (sums[k] / counts[k] * (1000 if k != "batch_size" else 1)) if counts.get(k) else None for k in sums}
    return {**{k: (round(v, 3) if v is not None else None) for k, v in means.items()}, "reasoning": reasoning,
            "errors": errors}


def summarize(latencies: list[float], codes: dict[int, int], wall: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "status_codes": {str(k): v for k, v in sorted(codes.items())},
            "wall_s": round(wall, 3), "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="exported bundle (default: build the tiny test bundle)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--redis-deadline-ms", type=float, default=25.0, help="the service's store-fetch budget")
    p.add_argument("--scenarios", default="hit,miss,redis_down")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/service_latency.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="scoter-bench-"))
    bundle = args.bundle
    if bundle is None:
        from tests.service.bundle_builder import build_bundle

        bundle = tmp / "tiny"
        build_bundle(bundle, n_items=2000, d=64, k=4, d_reason=64, max_len=20, beam=20)
    manifest, _ = load_bundle(bundle)
    items = json.loads((bundle / "items.json").read_text())
    rng = np.random.default_rng(0)
    users = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(args.users)]
    version = f"bench-{uuid.uuid4().hex[:8]}"
    bodies = []
    for i in range(args.requests):
        n = int(rng.integers(1, manifest.max_history + 1))
        bodies.append({"user_id": users[i % len(users)], "k": min(10, manifest.default_beam),
                       "history": [items[j] for j in rng.integers(0, len(items), n)]})

    r = redis.Redis.from_url(args.redis_url)
    keys = [reasoning_key(version, u) for u in users]
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, encode(rng.normal(size=(manifest.reasoning_steps, manifest.reasoning_dim))))
    pipe.execute()
    log.info("seeded %d reasoning values under version %s", len(keys), version)

    scenarios = {
        "hit": {"SCOTER_REASONING_VERSION": version, "SCOTER_REDIS_URL": args.redis_url},
        "miss": {"SCOTER_REASONING_VERSION": f"{version}-absent", "SCOTER_REDIS_URL": args.redis_url},
        "redis_down": {"SCOTER_REASONING_VERSION": version, "SCOTER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    }
    results = {}
    try:
        for name in args.scenarios.split(","):
            env = {**scenarios[name], "SCOTER_MAX_BATCH": str(args.max_batch),
                   "SCOTER_MAX_WAIT_MS": str(args.max_wait_ms), "SCOTER_QUEUE_CAPACITY": "4096",
                   "SCOTER_REDIS_DEADLINE_MS": str(args.redis_deadline_ms)}
            port = free_port()
            proc = start_server(bundle, env, port, args.workers)
            url = f"http://127.0.0.1:{port}"
            try:
                asyncio.run(load(url, bodies[: min(200, len(bodies))], args.concurrency))  # warm connections
                lat, codes, wall = asyncio.run(load(url, bodies, args.concurrency))
                results[name] = {**summarize(lat, codes, wall), "server": server_stats(url)}
                log.info("%s: %s", name, json.dumps(results[name]))
            finally:
                stop_server(proc)
    finally:
        r.delete(*keys)

    out = {
        "benchmark": "service_latency",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"2-core CPU sandbox ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus)",
        "git_commit": git_commit(),
        "bundle": str(args.bundle) if args.bundle else "tiny fixture (2000 items, T=20, K=4, D=64, beam=20)",
        "model": {"model_id": manifest.model_id, "max_history": manifest.max_history,
                  "K": manifest.reasoning_steps, "D": manifest.reasoning_dim, "beam": manifest.default_beam},
        "settings": {"requests": args.requests, "concurrency": args.concurrency, "workers": args.workers,
                     "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "users": args.users,
                     "redis_deadline_ms": args.redis_deadline_ms},
        "results": results,
    }
    write_json_atomic(args.out, out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
