"""CPU the load generator's HTTP client spends per request (httpx vs aiohttp), against a real `scoter serve`.

The open-loop benchmark runs its client on the server's cores, so client CPU is taken from the server; this says
how much. Sequential requests (no concurrency), `time.process_time()` of the client process, clients alternated.
Writes benchmarks/results/client_cost.json.

    python -m benchmarks.client_cost --bundle artifacts/export_bench_scoter_hstu/bundle
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import (
    RESULTS,
    median_se,
    poster,
    provenance,
    resolve_bundle,
    start_server,
    stop_server,
    write_result,
)
from scoter.testing import free_port


async def per_request(url: str, client: str, bodies: list[dict]) -> tuple[float, float]:
    """(client CPU ms, wall ms) per request over `bodies`, after 50 warm-up requests."""
    async with poster(url, 10.0, client) as post:
        for b in bodies[:50]:
            await post(b)
        c0, w0 = time.process_time(), time.perf_counter()
        codes = [await post(b) for b in bodies]
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if set(codes) != {"200"}:
        raise RuntimeError(f"{client}: non-200 answers {sorted(set(codes))}")
    return cpu / len(bodies) * 1e3, wall / len(bodies) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="exported bundle (default: the tiny test bundle)")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "client_cost.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle, manifest, items = resolve_bundle(args.bundle, Path(tmp))
        bodies = [{"user_id": f"u{i}", "k": 10, "history": items[i % len(items): i % len(items) + 8]}
                  for i in range(args.requests)]
        port = free_port()
        proc = start_server(bundle, {"SCOTER_REDIS_URL": "redis://127.0.0.1:6379/0"}, port, 1)
        try:
            runs: dict[str, list[tuple[float, float]]] = {"httpx": [], "aiohttp": []}
            for _ in range(args.rounds):
                for client in runs:
                    runs[client].append(asyncio.run(per_request(f"http://127.0.0.1:{port}", client, bodies)))
        finally:
            stop_server(proc)
    result = {
        "benchmark": "client_cost", **provenance(), "bundle": str(bundle), "requests": args.requests,
        "clients": {c: {"cpu_ms_per_request": [round(x[0], 3) for x in r],
                        "wall_ms_per_request": [round(x[1], 2) for x in r],
                        "cpu_ms_median": round(statistics.median(x[0] for x in r), 3),
                        "cpu_ms": median_se([x[0] for x in r])} for c, r in runs.items()},
    }
    result["httpx_over_aiohttp_cpu"] = round(result["clients"]["httpx"]["cpu_ms_median"]
                                             / result["clients"]["aiohttp"]["cpu_ms_median"], 2)
    write_result(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
