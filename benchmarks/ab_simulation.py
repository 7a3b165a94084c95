"""End-to-end A/B simulation: synthetic users through the real service and a real Redis, a planted lift, the analysis.

1. A private redis-server on its own port, the tiny test bundle, an experiment (control / scoter, 50/50) and a
   5% global holdout. The app (`service.app.create_app`, lifespan and all) serves every user over ASGI; exposure
   events go to the Redis Stream as in production.
2. Outcomes: each user converts with a probability that depends on history (sparse users less) and, for the
   treatment, is `1 + lift` times control's; converters buy 1-3 items of log-normal value. Some purchases happen
   before exposure (they must not count) and some are keyed by request id instead of user id.
3. `scoter ab analyze` reads the stream and the outcomes CSV; its conversion lift and 95% CI are compared with
   the planted lift.
4. A/A: `aa_runs` times, the exposed users split 50/50 again with a fresh hash seed and outcomes drawn without
   any lift: the share of runs whose 95% CI excludes 0 is the false-positive rate (alpha = 0.05 for a 95% CI).

    PYTHONPATH=. python benchmarks/ab_simulation.py --users 60000 --aa-runs 500 --out benchmarks/results/ab_simulation.json
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.harness import ROOT

log = logging.getLogger("ab_simulation")
EXPERIMENT, HOLDOUT, STREAM = "sim-ranker", "sim-holdout", "scoter:exposures"


@dataclass
class Served:
    user_id: str
    request_id: str
    variant: str
    holdout: bool
    history_length: int


def write_config(path: Path, bundle: Path, holdout_share: float) -> Path:
    path.write_text(json.dumps({
        "holdout": {"key": HOLDOUT, "seed": "sim-h", "share": holdout_share},
        "experiments": [{"key": EXPERIMENT, "seed": "sim", "variants": [
            {"name": "control", "weight": 0.5, "bundle": str(bundle)},
            {"name": "scoter", "weight": 0.5, "bundle": str(bundle)}]}]}))
    return path


async def serve_users(config: Path, redis_url: str, n_users: int, rng: np.random.Generator,
                      batch: int = 64) -> list[Served]:
    """Every user once (some twice) through the app; returns what each response served."""
    import httpx
    from asgi_lifespan import LifespanManager

    from service.app import create_app
    from service.settings import ServiceSettings

    # load shedding off: this is a correctness run, not a load test (a 429 is retried below anyway)
    extra = {k: 0 for k in ("queue_timeout_ms", "loop_lag_shed_ms") if k in ServiceSettings.model_fields}
    settings = ServiceSettings(experiments=config, redis_url=redis_url, warmup_runs=1, reload_on_sighup=False,
                               max_batch_request=batch, redis_deadline_ms=2000, redis_socket_timeout_s=2.0,
                               redis_connect_timeout_s=1.0, **extra)
    items = [f"I{i:05d}" for i in range(1, 51)]
    users = [f"sim-{i}" for i in range(n_users)]
    hist_len = rng.integers(1, 9, size=n_users)  # the tiny bundle's max_len is 8
    order = list(range(n_users)) + rng.choice(n_users, n_users // 5, replace=False).tolist()  # 20% come back
    served: list[Served] = []
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    app = create_app(settings)
    t0 = time.perf_counter()
    async with LifespanManager(app, startup_timeout=60) as manager:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://sim") as c:
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                body = {"requests": [{"user_id": users[i], "k": 5, "history": [items[j] for j in rng.integers(
                    0, len(items), int(hist_len[i]))]} for i in idx]}
                for attempt in range(5):  # as a client honouring Retry-After would
                    r = await c.post("/v1/recommendations:batch", json=body)
                    if r.status_code != 429:
                        break
                    await asyncio.sleep(0.05 * (attempt + 1))
                if r.status_code != 200:
                    raise RuntimeError(f"service answered {r.status_code}: {r.text[:200]}")
                for res in r.json()["results"]:
                    served.append(Served(res["user_id"], res["request_id"], res["variant"],
                                         any(a["experiment"] == HOLDOUT for a in res["assignments"]),
                                         res["history_length"]))
                if (start // batch) % 50 == 0:
                    log.info("served %d/%d requests (%.0f users/s)", start + len(idx), len(order),
                             (start + len(idx)) / (time.perf_counter() - t0))
            await app.state.recommender.exposures.flush()
    return served


def outcomes_for(served: list[Served], lift: float, rng: np.random.Generator, base_sparse: float = 0.5,
                 base_dense: float = 0.65, sparse_max: int = 3) -> pd.DataFrame:
    """Purchases per user (the user's first response decides their variant; it is sticky anyway), all after
    every exposure, plus decoys an hour before it; one purchase in four is keyed by request id only. Columns as
    `offline.ab.analyze.read_outcomes` returns them (`timestamp` as `ts`)."""
    first: dict[str, Served] = {}
    for s in served:
        first.setdefault(s.user_id, s)
    users = list(first.values())
    n = len(users)
    uid = np.array([s.user_id for s in users], dtype=object)
    rid = np.array([s.request_id for s in users], dtype=object)
    treated = np.array([s.variant == "scoter" and not s.holdout for s in users])
    sparse = np.array([s.history_length <= sparse_max for s in users])
    p = np.where(sparse, base_sparse, base_dense) * np.where(treated, 1 + lift, 1.0)
    buys = (rng.random(n) < p) * rng.integers(1, 4, n)
    idx = np.repeat(np.arange(n), buys)
    by_request = rng.random(len(idx)) < 0.25
    now = time.time()
    decoy = np.flatnonzero(rng.random(n) < 0.1)  # a purchase before the user was exposed: must be ignored
    frame = pd.DataFrame({
        "user_id": np.concatenate([np.where(by_request, None, uid[idx]), uid[decoy]]),
        "request_id": np.concatenate([np.where(by_request, rid[idx], None), np.full(len(decoy), None)]),
        "ts": np.concatenate([now + rng.uniform(1, 600, len(idx)), np.full(len(decoy), now - 3600)]),
        "value": rng.lognormal(2, 0.5, len(idx) + len(decoy))})
    return frame.astype({"user_id": "string", "request_id": "string"})


def aa_false_positive_rate(exposures: pd.DataFrame, served: list[Served], runs: int,
                           rng: np.random.Generator) -> dict:
    """`runs` A/A experiments over the served users: each one re-splits them 50/50 with a fresh seed (the
    service's GrowthBook hash), draws outcomes without any lift and asks whether the 95% CI excludes 0. A
    fresh split per run matters: reusing one split would repeat its chance imbalance (say, more dense users
    in one arm) in every run and inflate the rate."""
    from offline.ab.analyze import first_exposures, per_user_metrics, relative_lift
    from service.experiments import gb_hash

    users, _ = first_exposures(exposures, EXPERIMENT)
    by_user = {s.user_id: s for s in served}
    hits, t0 = 0, time.perf_counter()
    for r in range(runs):
        seed = f"aa-{r}"
        split = users.assign(variant=["scoter" if gb_hash(seed, u, 2) < 0.5 else "control" for u in users.user_id])
        aa_served = [Served(s.user_id, s.request_id, "control", s.holdout, s.history_length)
                     for s in by_user.values()]  # no one treated: outcomes without any lift
        frame = per_user_metrics(split, exposures, outcomes_for(aa_served, 0.0, rng))
        lift = relative_lift(frame.loc[frame.variant == "control", "converted"].to_numpy(),
                             frame.loc[frame.variant == "scoter", "converted"].to_numpy())
        hits += lift.ci_low > 0 or lift.ci_high < 0
        if (r + 1) % 50 == 0:
            log.info("A/A %d/%d: false positives %d (%.1f runs/s)", r + 1, runs, hits,
                     (r + 1) / (time.perf_counter() - t0))
    rate = hits / runs
    return {"runs": runs, "false_positives": hits, "rate": rate, "alpha": 0.05,
            "standard_error": float(np.sqrt(0.05 * 0.95 / runs)),
            "method": "each run: a fresh 50/50 hash split of the exposed users, outcomes drawn without lift"}


def simulate(work: Path, n_users: int, lift: float = 0.05, aa_runs: int = 20, seed: int = 0,
             holdout_share: float = 0.05) -> dict:
    """The whole simulation in `work` (a private redis-server lives there while it runs)."""
    from model_export.testing import build_bundle
    from offline.ab import analyze
    from scoter.cli import main as scoter_main
    from scoter.testing import redis_server

    rng = np.random.default_rng(seed)
    bundle = work / "bundle"
    build_bundle(bundle)
    config = write_config(work / "experiments.json", bundle, holdout_share)
    with redis_server(work) as (_, url):
        os.environ["SCOTER_EXPOSURES_STREAM"] = STREAM
        t0 = time.perf_counter()
        served = asyncio.run(serve_users(config, url, n_users, rng))
        serve_s = time.perf_counter() - t0
        outcomes = outcomes_for(served, lift, rng).rename(columns={"ts": "timestamp"})
        outcomes.to_csv(work / "outcomes.csv", index=False)
        source = f"{url}?stream={STREAM}"
        rc = scoter_main(["ab", "analyze", "--exposures", source, "--outcomes", str(work / "outcomes.csv"),
                          "--experiments", str(config), "--sparse-max", "3", "--json", str(work / "report.json"),
                          "--png", str(work / "report.png")])
        exposures = analyze.read_exposures(source)
    report = json.loads((work / "report.json").read_text())
    exp = next(r for r in report["experiments"] if r["experiment"] == EXPERIMENT)
    hold = next(r for r in report["experiments"] if r["experiment"] == HOLDOUT)
    treat = next(g for g in exp["variants"] if g["group"] == "scoter")
    in_exp = [s for s in served if not s.holdout]
    return {
        "users": n_users, "responses": len(served), "serve_s": round(serve_s, 1),
        "exposure_events": len(exposures),
        "exposure_events_logged_share": len(exposures) / len(served),  # one event per response, holdout included
        "analyze_exit_code": rc,
        "true_lift": lift,
        "estimate": treat["conversion_lift"]["relative"],
        "ci95": [treat["conversion_lift"]["ci_low"], treat["conversion_lift"]["ci_high"]],
        "p_value": treat["conversion_lift"]["p_value"],
        "ci_contains_true_lift": treat["conversion_lift"]["ci_low"] <= lift <= treat["conversion_lift"]["ci_high"],
        "ci_excludes_zero": treat["conversion_lift"]["ci_low"] > 0,
        "revenue_per_user_lift": treat["revenue_lift"],
        "srm_p": exp["srm"]["p_value"],
        "users_per_variant": {g["group"]: g["users"] for g in exp["variants"]},
        "holdout_users": next(g["users"] for g in hold["variants"] if g["group"] == "holdout"),
        "holdout_share_observed": sum(s.holdout for s in {s.user_id: s for s in served}.values()) / n_users,
        "segments": {k: {g["group"]: g["conversion_lift"] for g in rows if g["conversion_lift"]}
                     for k, rows in exp["segments"].items()},
        "in_experiment_responses": len(in_exp),
        "aa": aa_false_positive_rate(exposures, served, aa_runs, rng),
        "report_png": str(work / "report.png"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=60_000)
    p.add_argument("--lift", type=float, default=0.05)
    p.add_argument("--aa-runs", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ab_simulation.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from scoter.io import write_json_atomic

    with tempfile.TemporaryDirectory() as tmp:
        result = simulate(Path(tmp), args.users, args.lift, args.aa_runs, args.seed)
        png = args.out.with_suffix(".png")
        png.write_bytes(Path(result.pop("report_png")).read_bytes())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = {"benchmark": "ab_simulation", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} VM, {os.cpu_count()} CPUs, shared", "commit": commit,
           "command": " ".join(["python benchmarks/ab_simulation.py", *sys.argv[1:]]), "chart": png.name, **result}
    write_json_atomic(args.out, out)
    log.info("wrote %s and %s", args.out, png)
    print(json.dumps({k: out[k] for k in ("true_lift", "estimate", "ci95", "srm_p", "aa")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
