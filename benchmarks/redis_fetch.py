"""Latency of the service's own reasoning fetch (the `ReasoningFetcher` MGET) with no HTTP server around it.

The service benchmark measures a slower Redis stage when the service is idle than under load. This script separates the fetch from the service: the same client, the same value size, the same event loop (uvloop),
once back-to-back and once paced at fixed rates, where the process (and redis-server) sleep between calls. If the
paced fetch is as slow here as in the service, the cost is the machine waking two sleeping processes, not the
service's code. Writes benchmarks/results/redis_fetch.json.

    python -m benchmarks.redis_fetch --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
import uvloop

from benchmarks.harness import RESULTS, latency_ms, provenance, write_result
from scoter.reasoning_store import encode, reasoning_key
from service.reasoning_fetch import CircuitBreaker, ReasoningFetcher, ReasoningSpec, make_client

VERSION = "bench-redis-fetch"


def quantiles_ms(xs: list[float]) -> dict[str, float]:
    return {**latency_ms(xs), "n": len(xs)}


async def measure(url: str, users: int, calls: int, rates: list[float], k: int, d: int) -> dict:
    client = make_client(url, cluster=False, connect_timeout=1.0, socket_timeout=1.0, max_connections=16)
    fetcher = ReasoningFetcher(client, max_age_s=86400, deadline_ms=50, breaker=CircuitBreaker(5, 1.0))
    spec = ReasoningSpec(VERSION, k, d)
    rng = np.random.default_rng(0)
    keys = [reasoning_key(VERSION, f"u{i}") for i in range(users)]
    await client.mset({key: encode(rng.standard_normal((k, d)).astype(np.float32)) for key in keys})
    value_bytes = len(await client.get(keys[0]))

    async def one(i: int) -> float:
        t0 = time.perf_counter()
        got = await fetcher.fetch([f"u{i % users}"], [False], spec)
        took = time.perf_counter() - t0
        if got[0].status != "hit":
            raise RuntimeError(f"fetch of u{i % users} returned {got[0].status}")
        return took

    try:
        for i in range(200):  # warm the connection pool and the code paths
            await one(i)
        out: dict = {"value_bytes": value_bytes, "back_to_back": quantiles_ms([await one(i) for i in range(calls)])}
        for rate in rates:
            n = min(calls, int(rate * 30))  # at most 30 s per rate
            start, took = time.perf_counter(), []
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                took.append(await one(i))
            out[f"paced_{rate:g}_per_s"] = quantiles_ms(took)
        return out
    finally:
        await client.delete(*keys)
        await client.aclose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rates", type=float, nargs="+", default=[10.0, 50.0, 200.0])
    p.add_argument("--k", type=int, default=5, help="reasoning steps (the Beauty SCoTER-H bundle: 5)")
    p.add_argument("--d", type=int, default=384, help="reasoning dimension (the Beauty SCoTER-H bundle: 384)")
    p.add_argument("--out", type=Path, default=RESULTS / "redis_fetch.json")
    args = p.parse_args()
    result = uvloop.run(measure(args.redis_url, args.users, args.calls, args.rates, args.k, args.d))
    report = {"benchmark": "redis_fetch", **provenance(),
              "event_loop": "uvloop", "client": "redis-py asyncio + hiredis (service.reasoning_fetch)", **result}
    write_result(args.out, report)
    for name, v in result.items():
        print(name, v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
