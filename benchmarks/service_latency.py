"""Service latency: `scoter serve` (a separate process) + real Redis + a bundle, under open-loop load from one
client process (benchmarks/open_loop.py). Steps through rising rates and reports per rate: achieved throughput,
p50/p95/p99, error rate (non-2xx or transport error), and the server's per-stage breakdown (queue, redis,
inference, total, http). Also: the service overhead at low load (total - inference, as a share of inference), the
Redis fetch p99, and a Redis-down run (store URL pointing at a closed port). Writes benchmarks/results/service.json.

    python -m benchmarks.service_latency                                # tiny testing bundle, seeded users
    python -m benchmarks.service_latency --bundle artifacts/demo/bundles/scoter-hstu \
        --users 1-2000 --reasoning-version demo-v1                      # real bundle, H already in Redis
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis

from benchmarks.harness import (
    RESULTS,
    describe_bundle,
    parse_users,
    provenance,
    resolve_bundle,
    start_server,
    stop_server,
    write_result,
)
from benchmarks.open_loop import run_step
from scoter.reasoning_store import encode, reasoning_key
from scoter.testing import free_port

log = logging.getLogger("service_latency")


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The served bundle and the server settings passed to `scoter serve`."""
    p.add_argument("--bundle", type=Path, help="exported bundle (default: build the tiny testing bundle)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--redis-deadline-ms", type=float, default=25.0, help="the service's store-fetch budget")


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


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--out", type=Path, default=RESULTS / "service.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rng = np.random.default_rng(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="scoter-bench-"))
    bundle, manifest, items = resolve_bundle(args.bundle, tmp)
    r = redis.Redis.from_url(args.redis_url)
    users = parse_users(args.users)
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

    result = {
        "benchmark": "service_open_loop",
        **provenance(setup="server and load generator on the same machine"),
        "bundle": describe_bundle(args.bundle),
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
    }
    write_result(args.out, result)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
