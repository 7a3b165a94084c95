"""Per-request cost of A/B assignment: the official growthbook SDK against the service's own GrowthBook-spec code.

The config is the issue's: three experiments in two namespaces plus a 5% global holdout (the same file as
tests/service/test_experiments.py::THREE_IN_TWO). Per user id, three ways:
- `sdk_run_experiment`: growthbook.core.run_experiment for the holdout and each experiment, with a prebuilt
  GlobalContext and one EvaluationContext per request (the SDK's cheapest documented path; a `GrowthBook`
  object per request costs more);
- `sdk_growthbook_object`: a `GrowthBook(attributes=...)` per request, `.run()` per experiment;
- `service_assigner`: `service.experiments.Assigner.assign` (what the request path calls).
Each is timed over the same user ids in `repeats` interleaved rounds; medians of the per-round means, in us.

    PYTHONPATH=. python benchmarks/ab_assignment.py --out benchmarks/results/ab_assignment.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ab_assignment.json")
    args = p.parse_args(argv)

    import growthbook as gb
    from growthbook.common_types import EvaluationContext, GlobalContext, Options, StackContext, UserContext
    from growthbook.core import run_experiment

    from scoter.io import write_json_atomic
    from scoter.testing import THREE_IN_TWO, growthbook_experiments
    from service.experiments import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "three.json"
        path.write_text(json.dumps(THREE_IN_TWO))
        loaded = load_config(path)
    cfg = loaded.config
    sdk_exps, holdout = growthbook_experiments(cfg)
    g = GlobalContext(options=Options())
    users = [f"user-{i}" for i in range(args.users)]

    def sdk_run_experiment() -> None:
        for u in users:
            ctx = EvaluationContext(user=UserContext(attributes={"id": u}), global_ctx=g, stack=StackContext())
            if run_experiment(holdout, None, ctx).value == "holdout":
                continue
            for e in sdk_exps:
                run_experiment(e, None, ctx)

    def sdk_growthbook_object() -> None:
        for u in users:
            client = gb.GrowthBook(attributes={"id": u})
            if client.run(holdout).value == "holdout":
                continue
            for e in sdk_exps:
                client.run(e)

    def service_assigner() -> None:
        assign = loaded.assigner.assign
        for u in users:
            assign(u)

    ways = {"sdk_run_experiment": sdk_run_experiment, "sdk_growthbook_object": sdk_growthbook_object,
            "service_assigner": service_assigner}
    per_round: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            per_round[name].append((time.perf_counter() - t0) / len(users) * 1e6)
    stats = {k: {"median_us": round(float(np.median(v)), 2), "min_us": round(float(np.min(v)), 2),
                 "rounds_us": [round(x, 2) for x in v]} for k, v in per_round.items()}
    base = stats["service_assigner"]["median_us"]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = {"benchmark": "ab_assignment", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} VM, {os.cpu_count()} CPUs, shared", "commit": commit,
           "python": platform.python_version(), "growthbook": gb.__version__ if hasattr(gb, "__version__") else None,
           "command": " ".join(["python benchmarks/ab_assignment.py", *sys.argv[1:]]),
           "config": "3 experiments in 2 namespaces + 5% holdout (tests/service/test_experiments.py THREE_IN_TWO)",
           "users": args.users, "repeats": args.repeats, "per_request": stats,
           "ratio_to_service_assigner": {k: round(v["median_us"] / base, 2) for k, v in stats.items()}}
    write_json_atomic(args.out, out)
    print(json.dumps({k: v["median_us"] for k, v in stats.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
