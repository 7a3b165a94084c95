"""CLI: `scoter export --checkpoint CKPT --out DIR` and `scoter export verify --bundle DIR --dataset NAME`.

No torch at import time (the service image has none); heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from scoter.io import describe_output, format_size, write_text_atomic

log = logging.getLogger(__name__)


class _Advisory(logging.Filter):
    """Drops onnxruntime's quantiser hint to pre-process the graph (the bundle's int8 graph is verified for parity
    instead); shown with `scoter -v`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing before quantization")


def quiet_export_logs(verbose: bool) -> None:
    """Without -v: no tracing warnings from torch.onnx (unused-operator notes, dynamic-axis renames)."""
    if verbose:
        return
    import warnings

    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Advisory())


def _export(args: argparse.Namespace) -> int:
    if args.checkpoint is None or args.out is None:
        raise ValueError("export: --checkpoint and --out are required (or use `scoter export verify`)")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"--out: {args.out} already exists (pass --overwrite to replace it)")
    import torch

    quiet_export_logs(getattr(args, "verbose", False))  # after torch: its logging setup resets levels at import

    from model_export.export import ExportConfig, export_bundle
    from model_export.source import load_ranking_source

    torch.set_num_threads(args.threads)
    src = load_ranking_source(args.checkpoint, args.codes, args.dataset, args.beam, args.reasoning_steps)
    reasoning_version = args.reasoning_version
    if reasoning_version is None:
        if src.provenance["fused"]:
            raise ValueError("--reasoning-version: required for a SCoTER checkpoint: the version its H was "
                             "published under (`scoter reason publish --reasoning-version V`); without it every "
                             "request would be served as a reasoning miss")
        reasoning_version = "none"
    config = ExportConfig(
        model_id=args.model_id or f"scoter-{src.backbone}-{src.provenance['dataset']}",
        model_version=args.model_version, reasoning_version=reasoning_version, opset=args.opset,
        fp16=not args.no_fp16, int8=not args.no_int8, overwrite=args.overwrite,
        exclude_history=not args.include_history,
    )
    manifest = export_bundle(src, args.out, config)
    sizes = {name: (args.out / name).stat().st_size for name in manifest.files}
    log.info("wrote bundle %s (%s)", describe_output(args.out),
             ", ".join(f"{n} {format_size(b)}" for n, b in sorted(sizes.items(), key=lambda kv: -kv[1])[:4]))
    print(json.dumps({"bundle": str(args.out), "model_id": manifest.model_id, "graphs": manifest.graphs,
                      "reasoning_version": manifest.reasoning_version, "items": manifest.n_items,
                      "bytes": sum(sizes.values())}))
    return 0


def _verify(args: argparse.Namespace) -> int:
    import torch

    from model_export.source import dataset_feeds, load_ranking_source
    from model_export.verify import VerifyConfig, verify_bundle
    from scoter.bundle import load_bundle

    torch.set_num_threads(args.threads)
    manifest, bundle_dir = load_bundle(args.bundle)
    prov = manifest.export
    checkpoint = args.checkpoint or prov.get("checkpoint")
    if not checkpoint:
        raise ValueError(f"{bundle_dir}: manifest records no checkpoint; pass --checkpoint")
    dataset = args.dataset or prov.get("dataset")
    src = load_ranking_source(Path(checkpoint), args.codes or prov.get("codes"), dataset, manifest.default_beam,
                              manifest.reasoning_steps)
    src.module.exclude_history = bool(prov.get("exclude_history", False))  # the rule the graph was traced with
    if prov.get("checkpoint_sha256") and src.provenance["checkpoint_sha256"] != prov["checkpoint_sha256"]:
        log.warning("checkpoint %s differs from the one this bundle was exported from", checkpoint)
    feeds, targets, note = dataset_feeds(dataset, manifest.max_history, manifest.reasoning_steps,
                                         manifest.reasoning_dim, "test", args.max_users, args.reasoning_dir)
    report = verify_bundle(src.module, bundle_dir, feeds, VerifyConfig(
        intra_op_threads=args.threads, progress=True, variants=tuple(v for v in ("fp32", "fp16", "int8") if v in manifest.graphs)))
    report.update(bundle=str(bundle_dir), model_id=manifest.model_id, **note)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        write_text_atomic(args.report, text + "\n")
    return 0 if report["passed"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a trained model to an ONNX bundle (or verify one)")
    p.add_argument("--checkpoint", type=Path, help="backbone/fusion checkpoint (best.pt)")
    p.add_argument("--out", type=Path, help="bundle directory to create (written atomically)")
    p.add_argument("--codes", type=Path,
                   help="semantic IDs .npz (default: $SCOTER_ARTIFACTS/<dataset>/semantic_ids_{rqvae,rqkmeans}.npz)")
    p.add_argument("--dataset", help="dataset name (default: the one recorded by the checkpoint's run)")
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--reasoning-steps", type=int, help="K (default: from the checkpoint, else 4)")
    p.add_argument("--model-id")
    p.add_argument("--model-version", default="1")
    p.add_argument("--reasoning-version", default=None,
                   help="the version `scoter reason publish` wrote the H (and histories) under; the service reads "
                        "scoter:h:{version}:{user} and scoter:hist:{version}:{user} (default: required for SCoTER "
                        "checkpoints, 'none' for plain backbones)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 graph")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 CPU graph")
    p.add_argument("--include-history", action="store_true",
                   help="let the graph return items of the request's history (repeat purchases); by default it "
                   "never does")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_export)
    sub = p.add_subparsers(dest="export_command")
    v = sub.add_parser("verify", help="compare the bundle's ONNX rankings with PyTorch on the test users")
    v.add_argument("--bundle", type=Path, required=True)
    v.add_argument("--dataset", help="default: the one recorded in the manifest")
    v.add_argument("--checkpoint", type=Path, help="default: the one recorded in the manifest")
    v.add_argument("--codes", type=Path)
    v.add_argument("--max-users", type=int, help="first N test users only")
    v.add_argument("--reasoning-dir", type=Path, help="folder with H_test.npy and present_test.npy")
    v.add_argument("--report", type=Path, help="also write the JSON report here")
    v.add_argument("--threads", type=int, default=1)
    v.set_defaults(func=_verify)
