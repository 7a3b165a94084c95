"""Open-loop load against a running service, shared by the service benchmarks: requests on a fixed schedule
(Poisson or constant rate), each latency from its *intended* send time so queueing in the client or the server is
not hidden (no coordinated omission), and the server's own per-stage breakdown from its Prometheus histograms,
diffed between /metrics scrapes taken before and after a step."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import latency_ms, poster

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


async def fire(url: str, bodies: list[dict], offsets: np.ndarray, timeout_s: float,
               client: str = "aiohttp") -> tuple[np.ndarray, np.ndarray, dict[str, int], float]:
    """Send body i at start + offsets[i] whatever happened to earlier requests: (latency from the intended send
    time [n], client send lag [n], count per status code or error name, wall seconds)."""
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
    return latencies, lags, codes, wall


async def open_loop(url: str, bodies: list[dict], offsets: np.ndarray, timeout_s: float,
                    client: str = "aiohttp") -> dict:
    """`fire`, summarised: rates, status codes, latency percentiles, client send lag."""
    latencies, lags, codes, wall = await fire(url, bodies, offsets, timeout_s, client)
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
