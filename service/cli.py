"""`scoter serve` (uvicorn) and `scoter ab srm`. No torch, and heavy imports only inside the handlers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The `scoter serve` / `scoter-serve` options (anything else comes from SCOTER_* variables)."""
    src = serve.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="serve one model bundle")
    src.add_argument("--experiments", type=Path, help="experiments YAML/JSON: variants are bundles")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--redis-url", default=None)
    serve.add_argument("--graceful-shutdown-s", type=float, default=None,
                       help="on SIGTERM, wait this long for in-flight requests (default: SCOTER_GRACEFUL_SHUTDOWN_S)")
    serve.add_argument("--log-level", default="info")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the recommendation service (uvicorn)")
    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)

    ab = subparsers.add_parser("ab", help="A/B experiment tools")
    ab_sub = ab.add_subparsers(dest="ab_command", required=True)
    srm = ab_sub.add_parser("srm", help="sample-ratio-mismatch check (chi-squared) over exposure counts")
    counts = srm.add_mutually_exclusive_group(required=True)
    counts.add_argument("--exposures", help="unique users per variant from exposure events: JSONL file or "
                        "redis://host:port/db?stream=scoter:exposures (the right unit)")
    counts.add_argument("--metrics-url", help="a service's /metrics URL (scoter_exposures_total: counts requests, "
                        "so one heavy user skews it; prefer --exposures)")
    counts.add_argument("--counts", type=Path, help="JSON of counts: {variant: n} or {experiment: {variant: n}}")
    weights = srm.add_mutually_exclusive_group(required=True)
    weights.add_argument("--experiments", type=Path, help="experiments file giving the variant weights")
    weights.add_argument("--weights", help='JSON {variant: weight}, e.g. \'{"control": 0.5, "scoter": 0.5}\'')
    srm.add_argument("--experiment", default=None, help="experiment key (default: the running one)")
    srm.add_argument("--alpha", type=float, default=0.001)
    srm.set_defaults(func=_srm)

    analyze = ab_sub.add_parser("analyze", help="lift per variant (and holdout) from exposure and outcome events",
                                description="Joins outcomes to each user's first exposure; reports users, "
                                "conversion, revenue per user, relative lift with a 95%% CI, SRM over users and a "
                                "breakdown by a user segment. Needs the [ab] extra (duckdb, statsmodels).")
    analyze.add_argument("--exposures", required=True,
                         help="JSONL/Parquet file, or redis://host:port/db?stream=scoter:exposures")
    analyze.add_argument("--outcomes", type=Path, required=True,
                         help="CSV/Parquet: user_id or request_id, timestamp (epoch s or ISO), value")
    analyze.add_argument("--experiments", type=Path, default=None, help="experiments file: weights, control, holdout")
    analyze.add_argument("--experiment", default=None, help="one experiment key (default: all in the exposures)")
    analyze.add_argument("--segments", type=Path, default=None, help="CSV user_id, segment (default: history "
                         "length at first exposure, sparse vs dense)")
    analyze.add_argument("--sparse-max", type=int, default=5, help="most history items of a 'sparse' user")
    analyze.add_argument("--alpha", type=float, default=0.001, help="SRM threshold")
    analyze.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    analyze.add_argument("--png", type=Path, default=None, help="write a lift chart here")
    analyze.set_defaults(func=_analyze)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.settings import ServiceSettings

    env = {"SCOTER_BUNDLE": args.bundle, "SCOTER_EXPERIMENTS": args.experiments, "SCOTER_HOST": args.host,
           "SCOTER_PORT": args.port, "SCOTER_REDIS_URL": args.redis_url,
           "SCOTER_GRACEFUL_SHUTDOWN_S": getattr(args, "graceful_shutdown_s", None)}
    for key in ("SCOTER_BUNDLE", "SCOTER_EXPERIMENTS"):
        os.environ.pop(key, None)
    for key, value in env.items():
        if value is not None:
            os.environ[key] = str(Path(value).resolve()) if isinstance(value, Path) else str(value)
    settings = ServiceSettings()  # fails early, naming the bad setting
    for path in (settings.bundle, settings.experiments):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    _check_bundles(settings)
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="scoter-prom-")
        log.info("PROMETHEUS_MULTIPROC_DIR=%s (metrics aggregated over workers)", os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # SIGTERM/SIGINT: uvicorn stops accepting, lets in-flight requests finish (up to graceful_shutdown_s),
    # then the lifespan drains each batcher (settings.drain_timeout_s) and closes the store client
    uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port,
                workers=args.workers, log_level=args.log_level, access_log=settings.access_log,
                proxy_headers=settings.proxy_headers, timeout_graceful_shutdown=settings.graceful_shutdown_s)
    return 0


def _check_bundles(settings) -> None:
    """Verify every bundle the config serves (manifest, checksums, tables) before the server starts, so a bad
    one stops `serve` with one line naming the bundle and the reason (exit 2) rather than a lifespan traceback."""
    from scoter.bundle import load_bundle
    from service.experiments import load_config, single_bundle_config

    loaded = single_bundle_config(settings.bundle) if settings.bundle is not None else load_config(settings.experiments)
    for name, path in loaded.config.bundle_paths().items():
        try:
            load_bundle(path, verify_checksums=True)
        except (ValueError, OSError) as exc:
            raise ValueError(f"variant {name!r}: bundle cannot be served: {exc}") from exc


def main_serve(argv: list[str] | None = None) -> int:
    """`scoter-serve` console script: the same as `scoter serve`, errors reported like `scoter.cli.main`."""
    parser = argparse.ArgumentParser(prog="scoter-serve", description="run the SCoTER recommendation service")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _serve(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"scoter-serve: error: {exc}", file=sys.stderr)
        return 2


def _srm(args: argparse.Namespace) -> int:
    from service.experiments import load_config
    from service.srm import counts_from_file, counts_from_url, srm_test, users_from_exposures

    if args.weights is not None:
        try:
            weights = json.loads(args.weights)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--weights: not valid JSON ({exc})") from exc
        experiment = args.experiment
    else:
        cfg = load_config(args.experiments).config
        if args.experiment and cfg.holdout is not None and args.experiment == cfg.holdout.key:
            raise ValueError("--experiment: the holdout's split is not testable from exposures (only held-out "
                             "users log one); pick an experiment")
        exp = next((e for e in cfg.experiments if e.key == args.experiment), None) if args.experiment else cfg.active
        if exp is None:
            raise ValueError(f"--experiment: {args.experiment!r} is not in {args.experiments}")
        weights, experiment = {v.name: v.weight for v in exp.variants}, exp.key
    if args.exposures:
        by_exp = users_from_exposures(args.exposures, experiment)
    elif args.metrics_url:
        by_exp = counts_from_url(args.metrics_url, experiment)
    else:
        by_exp = counts_from_file(args.counts)
    if experiment is not None and experiment in by_exp:
        counts = by_exp[experiment]
    elif len(by_exp) == 1:
        experiment, counts = next(iter(by_exp.items()))
    else:
        raise ValueError(f"counts: found experiments {sorted(by_exp)}; choose one with --experiment")
    result = srm_test(counts, weights, experiment=experiment or "", alpha=args.alpha)
    print(result.to_json())
    if result.mismatch:
        print(f"SRM detected: p={result.p_value:.3g} < {args.alpha}", file=sys.stderr)
        return 1
    return 0


def _analyze(args: argparse.Namespace) -> int:
    try:
        from offline.ab import analyze
    except ImportError as exc:
        raise ValueError(f"scoter ab analyze needs the [ab] extra (pip install 'scoter[ab]'): {exc}") from exc
    reports = analyze.run(args.exposures, args.outcomes, experiment=args.experiment,
                          experiments_file=args.experiments, segments_path=args.segments,
                          sparse_max=args.sparse_max, alpha=args.alpha)
    print(analyze.format_table(reports))
    analyze.write_outputs(reports, args.json, args.png)
    return 1 if any(r.srm.get("mismatch") for r in reports) else 0
