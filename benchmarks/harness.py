"""What every benchmark shares: free ports, a `scoter serve` process started and stopped, the bundle to serve,
provenance (date, machine, commit, command), percentile and median summaries, and writing the result JSON.

Benchmarks run from the repository root as `python -m benchmarks.<name>`; each writes under benchmarks/results/.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoter.io import write_json_atomic
from scoter.paths import REPO_ROOT
from scoter.provenance import git_commit, machine

ROOT = REPO_ROOT
RESULTS = ROOT / "benchmarks" / "results"
RECOMMEND_PATH = "/v1/recommendations"
JSON_HEADERS = {"content-type": "application/json"}
# the tiny bundle a benchmark serves when it is given none (model_export/testing.py)
TINY_BUNDLE = {"n_items": 2000, "d": 64, "k": 4, "d_reason": 64, "max_len": 20, "beam": 20}

log = logging.getLogger("benchmarks")


# -- provenance and results -----------------------------------------------------------------------------------
def command() -> str:
    """How this benchmark was started, as `python -m benchmarks.<name> <args>`."""
    script = Path(sys.argv[0]).resolve()
    try:
        module = ".".join(script.relative_to(ROOT).with_suffix("").parts)
    except ValueError:
        module = script.stem
    return " ".join(["python -m", module, *sys.argv[1:]])


def provenance(device: str | None = None, **extra: Any) -> dict[str, Any]:
    """The labels every result carries: date (UTC), machine (with `device`, e.g. a GPU's name), commit, command."""
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(device),
            "git_commit": git_commit(), "command": command(), **extra}


def write_result(path: Path | str, doc: dict[str, Any]) -> Path:
    """Write a result JSON atomically (numpy values and paths as plain JSON) and log where."""
    write_json_atomic(path, doc, default=_plain)
    log.info("wrote %s", path)
    return Path(path)


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# -- summaries ------------------------------------------------------------------------------------------------
def latency_ms(latencies_s: Sequence[float] | np.ndarray, digits: int = 3) -> dict[str, float]:
    """p50 / p95 / p99 / mean in milliseconds of latencies given in seconds."""
    ms = np.asarray(latencies_s, dtype=float) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(float(p50), digits), "p95_ms": round(float(p95), digits),
            "p99_ms": round(float(p99), digits), "mean_ms": round(float(ms.mean()), digits)}


def median_se(values: Sequence[float], digits: int = 4) -> dict[str, float | int]:
    """Median, mean and the mean's standard error over repeats (se 0 for a single value)."""
    xs = [float(v) for v in values]
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return {"median": round(statistics.median(xs), digits), "mean": round(statistics.fmean(xs), digits),
            "se": round(se, digits), "n": len(xs)}


# -- a served bundle ------------------------------------------------------------------------------------------
def resolve_bundle(bundle: Path | None, tmp: Path) -> tuple[Path, Any, list[str]]:
    """The bundle to serve (the tiny testing bundle, built under `tmp`, when none is given), its manifest and
    item ids."""
    from scoter.bundle import load_bundle

    if bundle is None:
        from model_export.testing import build_bundle

        bundle = tmp / "tiny"
        build_bundle(bundle, **TINY_BUNDLE)
    manifest, _ = load_bundle(bundle)
    return bundle, manifest, json.loads((bundle / "items.json").read_text())


def describe_bundle(bundle: Path | None) -> str:
    return str(bundle) if bundle else "tiny testing bundle ({n_items} items, T={max_len}, K={k}, D={d_reason}, " \
        "beam={beam})".format(**TINY_BUNDLE)


def start_server(bundle: Path | None, env_extra: dict[str, str], port: int, workers: int = 1,
                 root: Path = ROOT, timeout_s: float = 120.0, serve_args: Sequence[str] = ()) -> subprocess.Popen:
    """`scoter serve` (`--bundle`, or what ``serve_args`` names, e.g. `--experiments FILE`) from checkout `root` in
    a child process; returns once /readyz answers 200. Its output goes to a temporary file (never a pipe a busy
    server could fill and block on), read back only if it fails to start."""
    import tempfile

    import httpx

    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", **env_extra}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "scoter.cli", "serve", *(["--bundle", str(bundle)] if bundle else []), *serve_args,
           "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    out = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            out.seek(0)
            raise RuntimeError(f"server exited with {proc.returncode}: {out.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready in {timeout_s:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (a graceful drain), then kill after 30 s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.asynccontextmanager
async def poster(url: str, timeout_s: float, client: str = "aiohttp"
                 ) -> AsyncIterator[Callable[[dict], Awaitable[str]]]:
    """`post(body) -> status code or error name` over one pooled client. aiohttp is the default because the
    load generator shares the server's cores and it costs less CPU per request than httpx
    (benchmarks/client_cost.py measures both)."""
    if client == "aiohttp":
        import aiohttp

        conn = aiohttp.TCPConnector(limit=1024)
        async with aiohttp.ClientSession(url, connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async def post(body: dict) -> str:
                try:
                    async with s.post(RECOMMEND_PATH, data=json.dumps(body), headers=JSON_HEADERS) as r:
                        await r.read()
                        return str(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    return type(exc).__name__
            yield post
        return
    import httpx

    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as hc:
        async def post(body: dict) -> str:
            try:
                return str((await hc.post(RECOMMEND_PATH, json=body)).status_code)
            except httpx.HTTPError as exc:
                return type(exc).__name__
        yield post


def parse_users(spec: str | None) -> list[str] | None:
    """'1-2000' -> ['1', ..., '2000']; a comma list as is; None -> the benchmark seeds its own users."""
    if spec is None:
        return None
    if "-" in spec and "," not in spec:
        lo, hi = (int(x) for x in spec.split("-"))
        return [str(i) for i in range(lo, hi + 1)]
    return spec.split(",")
