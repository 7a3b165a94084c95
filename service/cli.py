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
    counts.add_argument("--metrics-url", help="a service's /metrics URL (reads scoter_exposures_total)")
    counts.add_argument("--counts", type=Path, help="JSON of counts: {variant: n} or {experiment: {variant: n}}")
    weights = srm.add_mutually_exclusive_group(required=True)
    weights.add_argument("--experiments", type=Path, help="experiments file giving the variant weights")
    weights.add_argument("--weights", help='JSON {variant: weight}, e.g. \'{"control": 0.5, "scoter": 0.5}\'')
    srm.add_argument("--experiment", default=None, help="experiment key (default: the running one)")
    srm.add_argument("--alpha", type=float, default=0.001)
    srm.set_defaults(func=_srm)


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
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="scoter-prom-")
        log.info("PROMETHEUS_MULTIPROC_DIR=%s (metrics aggregated over workers)", os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # SIGTERM/SIGINT: uvicorn stops accepting, lets in-flight requests finish (up to graceful_shutdown_s),
    # then the lifespan drains each batcher (settings.drain_timeout_s) and closes the store client
    uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port,
                workers=args.workers, log_level=args.log_level, access_log=settings.access_log,
                proxy_headers=settings.proxy_headers, timeout_graceful_shutdown=settings.graceful_shutdown_s)
    return 0


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
    from service.srm import counts_from_file, counts_from_url, srm_test

    if args.weights is not None:
        try:
            weights = json.loads(args.weights)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--weights: not valid JSON ({exc})") from exc
        experiment = args.experiment
    else:
        cfg = load_config(args.experiments).config
        exp = next((e for e in cfg.experiments if e.key == args.experiment), None) if args.experiment else cfg.active
        if exp is None:
            raise ValueError(f"--experiment: {args.experiment!r} is not in {args.experiments}")
        weights, experiment = {v.name: v.weight for v in exp.variants}, exp.key
    by_exp = counts_from_url(args.metrics_url, experiment) if args.metrics_url else counts_from_file(args.counts)
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
