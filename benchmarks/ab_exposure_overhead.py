"""What exposure events cost the service: paired p99 at a fixed open-loop rate with events on vs off, the share
of in-experiment responses logged, and a Redis outage (requests still answered, drops counted).

Two `scoter serve --experiments` processes side by side, the same bundle and experiments file (one bundle
experiment, one label-only experiment in a namespace, a 5% holdout: 1-2 events per response), a private
redis-server on its own port for the reasoning store and the stream. A: events on (the default); B:
SCOTER_EXPOSURES_ENABLED=false. The same Poisson load goes to them in alternating slices (A B B A ...), so machine
noise lands on both alike; per slice the client-side p50/p99 (from the intended send time). Reported: median of
each build's slice p99s, the mean paired difference A - B with its standard error, and the pooled p99 over all
of a build's requests. Then the redis-server is killed and A gets the same load for one more slice.

    PYTHONPATH=. python benchmarks/ab_exposure_overhead.py --rate 200 --slices 8 --slice-s 10 \\
        --out benchmarks/results/ab_exposure_overhead.json      # --bundle DIR for a real bundle
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import redis
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import ROOT, start_server, stop_server
from benchmarks.open_loop import fire, schedule

log = logging.getLogger("ab_exposure_overhead")


async def open_loop(url: str, bodies: list[dict], rate: float, duration_s: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, dict[str, int]]:
    """Poisson arrivals; each request's latency from its intended send time (no coordinated omission)."""
    latencies, _, codes, _ = await fire(url, bodies, schedule(rate, duration_s, "poisson", rng), 10.0)
    return latencies, codes


def metric(url: str, name: str) -> dict[tuple, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {tuple(sorted(s.labels.items())): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name}


def write_config(path: Path, bundle: Path) -> Path:
    path.write_text(json.dumps({
        "holdout": {"key": "bench-holdout", "share": 0.05},
        "experiments": [
            {"key": "bench-ranker", "variants": [{"name": "control", "weight": 0.5, "bundle": str(bundle)},
                                                 {"name": "scoter", "weight": 0.5, "bundle": str(bundle)}]},
            {"key": "bench-layout", "namespace": {"id": "ui", "range": [0, 0.5]},
             "variants": [{"name": "grid", "weight": 0.5}, {"name": "list", "weight": 0.5}]}]}))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None, help="default: the test bundle builder's, 2,000 items")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--slices", type=int, default=8, help="slices per build")
    p.add_argument("--slice-s", type=float, default=10.0)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ab_exposure_overhead.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    from model_export.testing import build_bundle
    from scoter.io import write_json_atomic
    from scoter.testing import redis_server

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        bundle = args.bundle
        if bundle is None:
            bundle = tmp / "bundle"
            build_bundle(bundle, n_items=2000, d=64, k=4, d_reason=64, max_len=20, beam=20)
        items = json.loads((bundle / "items.json").read_text())
        config = write_config(tmp / "experiments.json", bundle.resolve())
        bodies = [{"user_id": f"u{int(rng.integers(args.users))}", "k": 10,
                   "history": [items[j] for j in rng.integers(0, len(items), int(rng.integers(1, 21)))]}
                  for _ in range(5000)]
        with redis_server(tmp) as (redis_proc, redis_url):
            base = {"SCOTER_REDIS_URL": redis_url, "SCOTER_EXPOSURES_STREAM": "bench:exposures"}
            builds = {"A": {}, "B": {"SCOTER_EXPOSURES_ENABLED": "false"}}
            procs, urls = {}, {}
            from scoter.testing import free_port
            try:
                for name, env in builds.items():
                    port = free_port()
                    procs[name] = start_server(None, {**base, **env}, port, serve_args=["--experiments", str(config)])
                    urls[name] = f"http://127.0.0.1:{port}"
                for name in builds:  # warm both
                    asyncio.run(open_loop(urls[name], bodies, 50, 3, rng))
                before = {n: sum(metric(urls[n], "scoter_exposures_total").values()) for n in builds}
                client = redis.Redis.from_url(redis_url)
                stream_before = client.xlen("bench:exposures")
                slices: dict[str, list[dict]] = {"A": [], "B": []}
                pooled: dict[str, list[np.ndarray]] = {"A": [], "B": []}
                for i in range(args.slices):
                    for name in ("AB" if i % 2 == 0 else "BA"):
                        lat, codes = asyncio.run(open_loop(urls[name], bodies, args.rate, args.slice_s, rng))
                        ok = sum(v for k, v in codes.items() if k == "200")
                        slices[name].append({"p50_ms": float(np.nanpercentile(lat, 50) * 1e3),
                                             "p99_ms": float(np.nanpercentile(lat, 99) * 1e3),
                                             "requests": len(lat), "ok": ok, "codes": codes})
                        pooled[name].append(lat)
                    log.info("slice %d/%d: A p99 %.2f ms, B p99 %.2f ms", i + 1, args.slices,
                             slices["A"][-1]["p99_ms"], slices["B"][-1]["p99_ms"])
                time.sleep(1.0)  # the writer's last flush
                exposed = sum(metric(urls["A"], "scoter_exposures_total").values()) - before["A"]
                logged = client.xlen("bench:exposures") - stream_before
                events = metric(urls["A"], "scoter_exposure_events_total")
                stream_len = client.xlen("bench:exposures")
                bytes_per_event = client.memory_usage("bench:exposures", samples=0) / max(stream_len, 1)
                client.close()
                # Redis down: kill it, same load on A
                redis_proc.kill()
                redis_proc.wait(5)
                drops_before = events.get((("outcome", "dropped"), ("sink", "redis")), 0.0)
                lat, codes = asyncio.run(open_loop(urls["A"], bodies, args.rate, args.slice_s, rng))
                time.sleep(1.0)
                drops = metric(urls["A"], "scoter_exposure_events_total").get(
                    (("outcome", "dropped"), ("sink", "redis")), 0.0) - drops_before
                down = {"requests": len(lat), "status_codes": codes,
                        "answered_200_share": codes.get("200", 0) / len(lat),
                        "p99_ms": round(float(np.nanpercentile(lat, 99) * 1e3), 2),
                        "exposure_events_dropped": drops}
            finally:
                for proc in procs.values():
                    stop_server(proc)
    p99 = {n: [s["p99_ms"] for s in slices[n]] for n in slices}
    diffs = np.array(p99["A"]) - np.array(p99["B"])
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = {
        "benchmark": "ab_exposure_overhead", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} VM, {os.cpu_count()} CPUs, shared; servers, load generator and Redis on "
                   "the same machine", "commit": commit,
        "command": " ".join(["python benchmarks/ab_exposure_overhead.py", *sys.argv[1:]]),
        "bundle": "test bundle builder (2,000 items, d=64, T=20)" if args.bundle is None else str(args.bundle),
        "method": f"open-loop Poisson {args.rate:g} req/s, {args.slices} x {args.slice_s:g} s slices per build, "
                  "ABBA order; A events on, B SCOTER_EXPOSURES_ENABLED=false; latency from the intended send time",
        "p99_ms_median": {n: round(float(np.median(v)), 3) for n, v in p99.items()},
        "p50_ms_median": {n: round(float(np.median([s["p50_ms"] for s in slices[n]])), 3) for n in slices},
        "p99_ms_pooled": {n: round(float(np.nanpercentile(np.concatenate(pooled[n]), 99) * 1e3), 3) for n in pooled},
        "p99_paired_difference_ms": {"mean": round(float(diffs.mean()), 3),
                                     "standard_error": round(float(diffs.std(ddof=1) / np.sqrt(len(diffs))), 3),
                                     "median": round(float(np.median(diffs)), 3)},
        "exposures_in_experiment": exposed, "events_logged": logged,
        "redis_bytes_per_event": round(bytes_per_event, 1),
        "logged_share": round(logged / exposed, 5) if exposed else None,
        "events_counter_A": {"/".join(v for _, v in k): n for k, n in events.items()},
        "redis_down": down, "load_average_1m": {"before": round(load_before[0], 2),
                                                "after": round(os.getloadavg()[0], 2)},
        "slices": slices,
    }
    write_json_atomic(args.out, out)
    print(json.dumps({k: out[k] for k in ("p99_ms_median", "p99_ms_pooled", "p99_paired_difference_ms",
                                          "logged_share", "redis_down")}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
