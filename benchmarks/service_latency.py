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
import contextlib
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
from collections.abc import AsyncIterator, Awaitable, Callable
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



def resolve_bundle(bundle: Path | None, tmp: Path) -> tuple[Path, object, list[str]]:
    """The bundle to serve (the small fixture bundle when none is given), its manifest and item ids."""
    if bundle is None:
        from tests.service.bundle_builder import build_bundle

        bundle = tmp / "tiny"
        build_bundle(bundle, n_items=2000, d=64, k=4, d_reason=64, max_len=20, beam=20)
    manifest, _ = load_bundle(bundle)
    return bundle, manifest, json.loads((bundle / "items.json").read_text())

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


def latency_ms(latencies_s, digits: int = 3) -> dict[str, float]:
    """p50 / p95 / p99 / mean in milliseconds of latencies given in seconds."""
    ms = np.asarray(latencies_s, dtype=float) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(float(p50), digits), "p95_ms": round(float(p95), digits),
            "p99_ms": round(float(p99), digits), "mean_ms": round(float(ms.mean()), digits)}


def summarize(latencies: list[float], codes: dict[int, int], wall: float) -> dict:
    return {"requests": len(latencies), "status_codes": {str(k): v for k, v in sorted(codes.items())},
            "wall_s": round(wall, 3), "requests_per_s": round(len(latencies) / wall, 1), **latency_ms(latencies)}


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The served bundle and the server settings both modes pass to `scoter serve`."""
    p.add_argument("--bundle", type=Path, help="exported bundle (default: build the tiny test bundle)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--redis-deadline-ms", type=float, default=25.0, help="the service's store-fetch budget")


def closed_main(argv: list[str] | None = None) -> int:
    """The fixed-concurrency (closed-loop) run: hit / miss / redis_down."""
    p = argparse.ArgumentParser(description="closed-loop service latency")
    add_server_args(p)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--scenarios", default="hit,miss,redis_down")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/service_latency.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="scoter-bench-"))
    bundle, manifest, items = resolve_bundle(args.bundle, tmp)
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


# ---------------------------------------------------------------------------------------------- open loop

STAGES = ("queue", "redis", "inference", "total", "http")
# "http": the instrumentator's whole-request time for the recommendation route inside the server (body read, JSON
# parsing, validation, the handler = "total", response serialisation); only the HTTP parser and TCP sit outside it.
HTTP_HANDLER = "/v1/recommendations"


def scrape(url: str) -> dict:
    """Cumulative stage histograms {stage: {"buckets": {le: count}, "sum", "count"}}, counters by label."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    hist: dict[str, dict] = {st: {"buckets": {}, "sum": 0.0, "count": 0.0} for st in STAGES}
    counters: dict[str, dict[str, float]] = {"reasoning": {}, "rejections": {}, "errors": {}}
    names = {"scoter_reasoning_total": ("reasoning", "status"), "scoter_rejections_total": ("rejections", "reason"),
             "scoter_errors_total": ("errors", "kind")}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            stage = None
            if s.name.startswith("scoter_stage_seconds"):
                stage = s.labels["stage"]
            elif s.name.startswith("http_request_duration_seconds") and s.labels.get("handler") == HTTP_HANDLER:
                stage = "http"
            if stage is not None:
                h = hist.setdefault(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    h["buckets"][le] = h["buckets"].get(le, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    h["sum"] += s.value
                elif s.name.endswith("_count"):
                    h["count"] += s.value
            elif s.name in names:
                group, label = names[s.name]
                counters[group][s.labels[label]] = counters[group].get(s.labels[label], 0.0) + s.value
    return {"hist": hist, "counters": counters}


def hist_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus-style histogram_quantile over cumulative buckets (linear within a bucket)."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0.0)
        prev_le, prev_c = le, c
    return prev_le


def stage_diff(before: dict, after: dict) -> dict:
    """Per stage: n, mean, p50/p95/p99 (ms) of the observations made between two scrapes."""
    out: dict[str, dict] = {}
    for st in STAGES:
        a, b = after["hist"].get(st), before["hist"].get(st, {"buckets": {}, "sum": 0.0, "count": 0.0})
        if a is None:
            continue
        n = a["count"] - b["count"]
        buckets = {le: c - b["buckets"].get(le, 0.0) for le, c in a["buckets"].items()}
        row: dict = {"n": int(n), "mean_ms": round((a["sum"] - b["sum"]) / n * 1000, 3) if n else None}
        for q in (0.5, 0.95, 0.99):
            v = hist_quantile(buckets, q)
            row[f"p{int(q * 100)}_ms"] = round(v * 1000, 3) if v is not None else None
        out[st] = row
    counters = {g: {k: int(v - before["counters"][g].get(k, 0.0)) for k, v in d.items()
                    if v - before["counters"][g].get(k, 0.0)} for g, d in after["counters"].items()}
    return {"stages": out, **counters}


def schedule(rate: float, duration_s: float, arrivals: str, rng: np.random.Generator) -> np.ndarray:
    """Intended send offsets (s) for one step: Poisson (exponential gaps) or constant rate."""
    n = int(rate * duration_s)
    if arrivals == "constant":
        return np.arange(n) / rate
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


@contextlib.asynccontextmanager
async def poster(url: str, timeout_s: float, client: str) -> AsyncIterator[Callable[[dict], Awaitable[str]]]:
    """`post(body) -> status code or error name` over one pooled client. aiohttp (default) spends 2.8x less
    CPU per request than httpx (benchmarks/client_cost.py); with the generator on the server's cores, every bit of its CPU is taken from the server."""
    path = "/v1/recommendations"
    if client == "aiohttp":
        import aiohttp

        conn = aiohttp.TCPConnector(limit=1024)
        async with aiohttp.ClientSession(url, connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async def post(body: dict) -> str:
                try:
                    async with s.post(path, data=json.dumps(body), headers=JSON_HEADERS) as r:
                        await r.read()
                        return str(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    return type(exc).__name__
            yield post
        return
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as hc:
        async def post(body: dict) -> str:
            try:
                return str((await hc.post(path, json=body)).status_code)
            except httpx.HTTPError as exc:
                return type(exc).__name__
        yield post


JSON_HEADERS = {"content-type": "application/json"}


async def open_loop(url: str, bodies: list[dict], offsets: np.ndarray, timeout_s: float,
                    client: str = "aiohttp") -> dict:
    """Fire body i at start + offsets[i] whatever happened to earlier requests; latency from that intended time."""
    latencies = np.full(len(offsets), np.nan)
    lags = np.zeros(len(offsets))
    codes: dict[str, int] = {}
    async with poster(url, timeout_s, client) as post:
        async def one(i: int, intended: float) -> None:
            lags[i] = time.perf_counter() - intended
            key = await post(bodies[i % len(bodies)])
            latencies[i] = time.perf_counter() - intended
            codes[key] = codes.get(key, 0) + 1

        tasks = []
        start = time.perf_counter() + 0.05
        for i, off in enumerate(offsets):
            intended = start + float(off)
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, intended)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    return {
        "offered_rps": round(len(offsets) / float(offsets[-1]), 1) if len(offsets) > 1 else None,
        "requests": len(offsets), "achieved_rps": round(ok / wall, 1), "wall_s": round(wall, 2),
        "status_codes": dict(sorted(codes.items())), "error_rate": round(1 - ok / len(offsets), 4),
        **latency_ms(latencies, digits=2), "max_ms": round(float(np.max(latencies)) * 1000, 2),
        "client_send_lag_p99_ms": round(float(np.percentile(lags, 99) * 1000), 2),
    }


def run_step(url: str, bodies: list[dict], rate: float, duration_s: float, arrivals: str,
             rng: np.random.Generator, timeout_s: float, client: str = "aiohttp") -> dict:
    before = scrape(url)
    res = asyncio.run(open_loop(url, bodies, schedule(rate, duration_s, arrivals, rng), timeout_s, client))
    after = scrape(url)
    return {"rate": rate, **res, "server": stage_diff(before, after)}


def median_over_repeats(steps: list[dict]) -> list[dict]:
    """Per offered rate: the median over sweeps of achieved rate, p50/p95/p99 and error rate, and every p99."""
    rates = sorted({s["rate"] for s in steps})
    rows = []
    for rate in rates:
        runs = [s for s in steps if s["rate"] == rate]
        row: dict = {"rate": rate, "sweeps": len(runs)}
        for key in ("achieved_rps", "p50_ms", "p95_ms", "p99_ms", "error_rate"):
            row[f"{key}_median"] = round(float(np.median([s[key] for s in runs])), 3)
        row["p99_ms_each"] = [s["p99_ms"] for s in runs]
        rows.append(row)
    return rows


def parse_users(spec: str | None, n: int) -> list[str] | None:
    """'1-2000' -> ['1', ..., '2000']; a comma list as is; None -> the benchmark seeds its own users."""
    if spec is None:
        return None
    if "-" in spec and "," not in spec:
        lo, hi = (int(x) for x in spec.split("-"))
        return [str(i) for i in range(lo, hi + 1)]
    return spec.split(",")


def open_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="open-loop service load test")
    add_server_args(p)
    p.add_argument("--rates", default="25,50,100,150,200,300", help="requests/s per step")
    p.add_argument("--duration", type=float, default=12.0, help="seconds per step")
    p.add_argument("--repeats", type=int, default=1, help="sweeps over all rates; per rate the median is reported")
    p.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson")
    p.add_argument("--low-rate", type=float, default=10.0, help="rate for the overhead and Redis-down runs")
    p.add_argument("--low-duration", type=float, default=30.0, help="seconds at --low-rate (300 requests: a stabler p99)")
    p.add_argument("--users", default=None, help="user ids already holding H in Redis, e.g. 1-2000 "
                   "(default: seed random H for fresh users under a fresh reasoning version)")
    p.add_argument("--n-users", type=int, default=1000, help="users to seed when --users is not given")
    p.add_argument("--reasoning-version", default=None, help="with --users: the version their H is under")
    p.add_argument("--queue-capacity", type=int, default=256)
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout per request (s)")
    p.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp", help="load generator's HTTP client")
    p.add_argument("--slo-p99-ms", type=float, default=50.0)
    p.add_argument("--skip-redis-down", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/service.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rng = np.random.default_rng(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="scoter-bench-"))
    bundle, manifest, items = resolve_bundle(args.bundle, tmp)
    r = redis.Redis.from_url(args.redis_url)
    users = parse_users(args.users, args.n_users)
    seeded: list[str] = []
    if users is None:
        version = f"bench-{uuid.uuid4().hex[:8]}"
        users = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(args.n_users)]
        seeded = [reasoning_key(version, u) for u in users]
        pipe = r.pipeline(transaction=False)
        for key in seeded:
            pipe.set(key, encode(rng.normal(size=(manifest.reasoning_steps, manifest.reasoning_dim))))
        pipe.execute()
        log.info("seeded %d reasoning values under version %s", len(seeded), version)
    else:
        version = args.reasoning_version or manifest.reasoning_version
        have = sum(r.exists(reasoning_key(version, u)) for u in users[:50])
        log.info("using %d existing users, version %s (%d/50 sampled have H)", len(users), version, have)
    order = rng.permutation(len(users))
    bodies = []
    for i in range(20000):
        n = int(rng.integers(1, manifest.max_history + 1))
        bodies.append({"user_id": users[order[i % len(users)]], "k": min(10, manifest.default_beam),
                       "history": [items[j] for j in rng.integers(0, len(items), n)]})

    base_env = {"SCOTER_REASONING_VERSION": version, "SCOTER_MAX_BATCH": str(args.max_batch),
                "SCOTER_MAX_WAIT_MS": str(args.max_wait_ms), "SCOTER_QUEUE_CAPACITY": str(args.queue_capacity),
                "SCOTER_REDIS_DEADLINE_MS": str(args.redis_deadline_ms)}
    rates = [float(x) for x in args.rates.split(",")]
    out: dict = {}
    try:
        port = free_port()
        proc = start_server(bundle, {**base_env, "SCOTER_REDIS_URL": args.redis_url}, port, args.workers)
        url = f"http://127.0.0.1:{port}"
        try:
            run_step(url, bodies, 20, 3, "constant", rng, args.timeout, args.client)  # warm connections and caches
            low = run_step(url, bodies, args.low_rate, args.low_duration, args.arrivals, rng, args.timeout, args.client)
            st = low["server"]["stages"]
            overhead = {
                "rate": args.low_rate, "mean_total_ms": st["total"]["mean_ms"],
                "mean_inference_ms": st["inference"]["mean_ms"],
                "overhead_ms": round(st["total"]["mean_ms"] - st["inference"]["mean_ms"], 3),
                "overhead_share_of_inference": round(
                    (st["total"]["mean_ms"] - st["inference"]["mean_ms"]) / st["inference"]["mean_ms"], 3),
                "p50_total_ms": st["total"]["p50_ms"], "p50_inference_ms": st["inference"]["p50_ms"],
                "mean_http_ms": st["http"]["mean_ms"],
                "http_overhead_share_of_inference": round(
                    (st["http"]["mean_ms"] - st["inference"]["mean_ms"]) / st["inference"]["mean_ms"], 3),
                "redis_fetch_p50_ms": st["redis"]["p50_ms"], "redis_fetch_p99_ms": st["redis"]["p99_ms"],
                "client": {k: low[k] for k in ("p50_ms", "p95_ms", "p99_ms", "error_rate", "status_codes")},
                "reasoning": low["server"]["reasoning"]}
            log.info("low load: %s", json.dumps(overhead))
            steps = []
            for rep in range(args.repeats):  # whole sweeps, so a burst of machine noise hits one rate once
                for rate in rates:
                    step = run_step(url, bodies, rate, args.duration, args.arrivals, rng, args.timeout, args.client)
                    steps.append({"repeat": rep, **step})
                    log.info("sweep %d rate %s: achieved %s/s p50 %s p95 %s p99 %s err %s stages %s", rep + 1, rate,
                             step["achieved_rps"], step["p50_ms"], step["p95_ms"], step["p99_ms"], step["error_rate"],
                             {k: v["p99_ms"] for k, v in step["server"]["stages"].items()})
        finally:
            stop_server(proc)
        out["low_load"] = overhead
        out["steps"] = steps
        out["per_rate"] = per_rate = median_over_repeats(steps)
        crossing = next((r["rate"] for r in per_rate if r["p99_ms_median"] > args.slo_p99_ms), None)
        out["p99_slo_ms"] = args.slo_p99_ms
        out["p99_crosses_slo_at_rps"] = crossing
        out["max_rate_within_slo_rps"] = max(
            (r["rate"] for r in per_rate if r["p99_ms_median"] <= args.slo_p99_ms), default=None)

        if not args.skip_redis_down:
            port = free_port()
            proc = start_server(bundle, {**base_env, "SCOTER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
                                port, args.workers)
            url = f"http://127.0.0.1:{port}"
            try:
                run_step(url, bodies, 20, 2, "constant", rng, args.timeout, args.client)
                down = run_step(url, bodies, args.low_rate, args.low_duration, args.arrivals, rng, args.timeout, args.client)
                ready = httpx.get(f"{url}/readyz", timeout=5).json()
            finally:
                stop_server(proc)
            five = sum(v for k, v in down["status_codes"].items() if k.startswith("5"))
            out["redis_down"] = {**down, "n_5xx": five, "readyz": ready,
                                 "redis_deadline_ms": args.redis_deadline_ms,
                                 "p99_rise_vs_low_load_ms": round(down["p99_ms"] - low["p99_ms"], 2)}
            log.info("redis down: %s", json.dumps(out["redis_down"]))
    finally:
        if seeded:
            r.delete(*seeded)

    old = ROOT / "benchmarks/results/service_latency.json"
    result = {
        "benchmark": "service_open_loop",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"CPU sandbox shared with other jobs ({platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cpus); server and load generator on the same machine",
        "git_commit": git_commit(),
        "bundle": str(args.bundle) if args.bundle else "tiny fixture (2000 items, T=20, K=4, D=64, beam=20)",
        "model": {"model_id": manifest.model_id, "backbone": manifest.backbone, "n_items": manifest.n_items,
                  "max_history": manifest.max_history, "K": manifest.reasoning_steps,
                  "D": manifest.reasoning_dim, "beam": manifest.default_beam},
        "method": f"open loop, one {args.client} client process; latency from the intended send time; stage "
                  "breakdown from the server's scoter_stage_seconds histograms diffed per step "
                  "(quantiles interpolated within buckets)",
        "settings": {"rates": rates, "duration_s": args.duration, "repeats": args.repeats, "arrivals": args.arrivals,
                     "workers": args.workers, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                     "queue_capacity": args.queue_capacity, "redis_deadline_ms": args.redis_deadline_ms,
                     "users": len(users), "reasoning_version": version, "seed": args.seed,
                     "client": args.client},
        **out,
        "closed_loop": json.loads(old.read_text()) if old.exists() else None,
    }
    write_json_atomic(args.out, result)
    log.info("wrote %s", args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--mode", choices=("open", "closed"), default="open")
    args, rest = p.parse_known_args(argv)
    return open_main(rest) if args.mode == "open" else closed_main(rest)


if __name__ == "__main__":
    sys.exit(main())
