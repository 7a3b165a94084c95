"""Paired low-load comparison of two service builds: where a change to the request path moves the overhead.

Single low-load runs of `benchmarks.service_latency` drift by more from one minute to the next on a shared machine
than most single changes to the request path move the overhead. This script starts two servers side by side (A and
B: two checkouts of the repository, or one with two sets of `SCOTER_*` settings) and sends the same open-loop
load to them in alternating slices (A B B A A B ...), so machine noise lands on both alike. Per build it reports
the request-weighted mean of each server stage (from the Prometheus histograms, benchmarks/open_loop.py) and
the overhead: `total - inference` (the handler) and `http - inference` (the whole request inside the server).

    python -m benchmarks.service_overhead_ab --bundle artifacts/bundles/scoter-hstu-cpu45 \\
        --users 1-22363 --reasoning-version beauty-cpu45 --b-env SCOTER_FAST_PATH=false --out ...json
    # another checkout as B (git worktree add /tmp/base <commit>):  --b-root /tmp/base
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.open_loop import run_step
from scoter.testing import free_port

log = logging.getLogger("service_overhead_ab")


def commit_of(root: Path) -> str:
    run = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return run.stdout.strip() + ("-dirty" if dirty else "") if run.returncode == 0 else "unknown"


def parse_env(spec: str) -> dict[str, str]:
    """'K=V,K2=V2' -> dict; names must be SCOTER_* settings."""
    out = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
    bad = [k for k in out if not k.startswith("SCOTER_")]
    if bad:
        raise SystemExit(f"--a-env/--b-env: {bad} are not SCOTER_* settings")
    return out


def weighted(slices: list[dict]) -> dict[str, float]:
    """Request-weighted mean ms per stage over the slices."""
    n: dict[str, int] = {}
    total: dict[str, float] = {}
    for st in slices:
        for stage, row in st.items():
            if row["n"]:
                n[stage] = n.get(stage, 0) + row["n"]
                total[stage] = total.get(stage, 0.0) + row["n"] * row["mean_ms"]
    return {stage: round(total[stage] / n[stage], 4) for stage in n} | {"requests": n.get("total", 0)}


def summary(means: dict[str, float]) -> dict[str, float]:
    inf = means["inference"]
    return {"handler_overhead_ms": round(means["total"] - inf, 4),
            "http_overhead_ms": round(means["http"] - inf, 4),
            "handler_overhead_share": round((means["total"] - inf) / inf, 4),
            "http_overhead_share": round((means["http"] - inf) / inf, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--users", required=True, help="user ids with H in the store, e.g. 1-22363")
    p.add_argument("--reasoning-version", required=True)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--a-root", type=Path, default=harness.ROOT, help="checkout that serves A (default: this one)")
    p.add_argument("--b-root", type=Path, default=harness.ROOT, help="checkout that serves B")
    p.add_argument("--a-env", default="", help="SCOTER_* settings for A, K=V,K=V")
    p.add_argument("--b-env", default="", help="SCOTER_* settings for B")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--slices", type=int, default=12, help="slices per build")
    p.add_argument("--slice-s", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    builds = {"A": (args.a_root.resolve(), parse_env(args.a_env)), "B": (args.b_root.resolve(), parse_env(args.b_env))}
    bundle, _, items = harness.resolve_bundle(args.bundle, Path("."))
    rng = np.random.default_rng(args.seed)
    users = harness.parse_users(args.users)
    bodies = [{"user_id": users[int(rng.integers(len(users)))], "k": 10,
               "history": [items[j] for j in rng.integers(0, len(items), int(rng.integers(1, 21)))]}
              for _ in range(5000)]
    base = {"SCOTER_REASONING_VERSION": args.reasoning_version, "SCOTER_REDIS_URL": args.redis_url}
    procs, urls = {}, {}
    try:
        for name, (root, env) in builds.items():
            port = free_port()  # `scoter serve` runs from this build's checkout (cwd and PYTHONPATH)
            procs[name] = harness.start_server(bundle.resolve(), {**base, **env}, port, 1, root=root)
            urls[name] = f"http://127.0.0.1:{port}"
            log.info("build %s: %s %s on %s", name, root, env, urls[name])
        for name in builds:
            run_step(urls[name], bodies, 20, 3, "constant", rng, 5.0)  # warm both
        slices: dict[str, list[dict]] = {"A": [], "B": []}
        for i in range(args.slices):
            for name in ("AB" if i % 2 == 0 else "BA"):
                step = run_step(urls[name], bodies, args.rate, args.slice_s, "poisson", rng, 5.0)
                if step["error_rate"]:
                    raise SystemExit(f"build {name}: errors {step['status_codes']}")
                slices[name].append(step["server"]["stages"])
            log.info("slice %d/%d done", i + 1, args.slices)
    finally:
        for proc in procs.values():
            harness.stop_server(proc)
    result: dict = {}
    for name, (root, env) in builds.items():
        means = weighted(slices[name])
        result[name] = {"root": str(root), "commit": commit_of(root), "env": env, "stage_mean_ms": means,
                        **summary(means)}
        log.info("%s: %s", name, json.dumps(result[name]))
    out = {"benchmark": "service_overhead_ab",
           **harness.provenance(setup="servers, load generator and Redis on the same machine"),
           "method": f"two servers side by side, alternating {args.slice_s:g}-s open-loop slices (ABBA...) at "
                     f"{args.rate:g} req/s, {args.slices} per build; request-weighted stage means",
           "builds": result,
           "difference_a_minus_b_ms": {
               "handler_overhead": round(result["A"]["handler_overhead_ms"] - result["B"]["handler_overhead_ms"], 4),
               "http_overhead": round(result["A"]["http_overhead_ms"] - result["B"]["http_overhead_ms"], 4)}}
    harness.write_result(args.out, out)
    print(json.dumps(out["difference_a_minus_b_ms"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
