"""Reasoning pipeline benchmark on Beauty (2-core CPU): GVM on a user sample with the local 135M model,
teacher chains, encoder student, H for ALL users, LoRA student on a sample. Writes the H arrays under
artifacts/beauty/reasoning/ and the measurements to benchmarks/results/beauty_reasoning.json.

Resumable: each stage skips work whose output exists (and LLM answers are cached), so rerunning after a kill
continues. Run: OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/reasoning.py"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import time
from pathlib import Path

from scoter.paths import REPO_ROOT, artifacts_root
from scoter.provenance import git_commit

log = logging.getLogger("benchmarks.reasoning")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--gvm-users", type=int, default=48)
    ap.add_argument("--teacher-users", type=int, default=100)
    ap.add_argument("--template", default="discovered")
    ap.add_argument("--fallback-template", default="beauty_paper",
                    help="used (and recorded) when GVM finds no usable chain at all")
    ap.add_argument("--step-max-tokens", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lora-steps", type=int, default=40)
    ap.add_argument("--lora-seconds", type=float, default=420)
    ap.add_argument("--lora-users", type=int, default=16)
    ap.add_argument("--out", default=None)
    ap.add_argument("--publish-only", action="store_true",
                    help="time `publish` of the existing H_test to --redis-url (results: beauty_reasoning_publish.json)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--reasoning-version", default="beauty-bench")
    ap.add_argument("--results", default=str(REPO_ROOT / "benchmarks" / "results" / "beauty_reasoning.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import numpy as np
    import torch

    from offline.reasoning import corpus, pipeline
    from offline.reasoning.config import (
        DistillConfig,
        EncoderStudentConfig,
        GVMConfig,
        LocalLLMConfig,
        LoraStudentConfig,
    )
    from offline.reasoning.gvm import load_template, run_gvm
    from offline.reasoning.io import read_json, write_json
    from offline.reasoning.local_backend import LocalLLM

    torch.set_num_threads(1)
    out = Path(args.out or artifacts_root() / args.dataset / "reasoning")
    out.mkdir(parents=True, exist_ok=True)
    if args.publish_only:
        publish_benchmark(args, out)
        return
    times: dict[str, float] = {}
    t = time.perf_counter()
    ds = corpus.load(args.dataset)
    llm = LocalLLM(LocalLLMConfig(batch_size=16), cache_path=out / "llm_cache.jsonl")
    times["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    gvm_dir = out / "gvm"
    template = args.template
    if (gvm_dir / "report.json").exists():
        gvm_report = read_json(gvm_dir / "report.json")
    else:
        try:
            gvm_report = run_gvm(GVMConfig(dataset=args.dataset, users=args.gvm_users, reason_max_tokens=64,
                                           recs_max_tokens=160), llm, ds, gvm_dir)
        except ValueError as exc:  # every chain malformed: record it and distil with the fallback template
            log.warning("GVM found no usable chain (%s); using template %s", exc, args.fallback_template)
            gvm_report = read_json(gvm_dir / "report.json")
    if template == "discovered" and not (gvm_dir / "template.json").exists():
        template = args.fallback_template
        gvm_report["template_source"] = f"fallback:{template}"
    times["gvm_s"] = time.perf_counter() - t
    gvm_tokens = (llm.generated_tokens, llm.generation_seconds)

    steps = load_template(template, gvm_dir)
    dcfg = DistillConfig(dataset=args.dataset, template=template, teacher_users=args.teacher_users,
                         step_max_tokens=args.step_max_tokens)
    t = time.perf_counter()
    teacher = pipeline.run_teacher(llm, ds, steps, dcfg, out)
    times["teacher_s"] = time.perf_counter() - t

    ecfg = EncoderStudentConfig(epochs=args.epochs)
    t = time.perf_counter()
    student, srep = pipeline.train_encoder_student(ds, teacher, ecfg, out)
    times["encoder_student_train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prep = pipeline.precompute_h(student, ds, out, ecfg)
    times["precompute_h_all_users_s"] = time.perf_counter() - t
    pipeline.write_meta(out, ds, steps, {"template_name": template, "gvm_template_source":
                                         gvm_report.get("template_source")})
    h_test = np.load(out / "H_test.npy", mmap_mode="r")

    result = {
        "benchmark": "reasoning", "dataset": args.dataset, "machine": "2-core CPU sandbox (shared)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(), "torch": torch.__version__,
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/reasoning.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "results"),
        "llm": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised, float32, 1 thread)",
        "gvm": {k: gvm_report.get(k) for k in ("users", "generated", "malformed", "malformed_rate",
                                               "malformed_by_reason", "pruned_near_duplicates", "scored",
                                               "mean_recall_at_20", "template_source", "template", "times")},
        "gvm_clusters": read_json(gvm_dir / "clusters.json") if (gvm_dir / "clusters.json").exists() else None,
        "gvm_tokens_per_second": gvm_tokens[0] / gvm_tokens[1] if gvm_tokens[1] else None,
        "teacher": teacher["report"], "encoder_student": srep,
        "precompute": {**prep, "H_shape": list(h_test.shape),
                       "users_per_second": (2 * ds.n_users) / max(times["precompute_h_all_users_s"], 1e-9)},
        "h_dir": str(out), "times": times,
    }
    write_json(Path(args.results), result)  # written before the slow LoRA stage, updated after it
    log.info("H ready in %s; running the LoRA student", out)

    if args.lora_users > 0:
        t = time.perf_counter()
        lcfg = LoraStudentConfig(steps=args.lora_steps, max_seconds=args.lora_seconds)
        lrep = pipeline.run_lora_student(ds, teacher, lcfg, dcfg, out, sample_users=args.lora_users)
        lrep.pop("losses", None)
        times["lora_student_s"] = time.perf_counter() - t
        result["lora_student"] = lrep
    result["times"] = times
    write_json(Path(args.results), result)
    print(json.dumps({k: result[k] for k in ("gvm", "times")}, indent=1, default=str))


def publish_benchmark(args: argparse.Namespace, out: Path) -> None:
    """Bulk load of every user's H_test (float16) plus histories into Redis, timed; then a resume pass."""
    from offline.reasoning import corpus
    from offline.reasoning.config import PublishConfig
    from offline.reasoning.io import write_json
    from offline.reasoning.publish import clear_progress, connect, load_h_dir, publish

    h, present, ids = load_h_dir(out, "test")
    ds = corpus.load(args.dataset)
    ext = ds.external_ids()
    hist = [[ext[i - 1] for i in corpus.history(s, "test")] for s in ds.sequences]
    client, where = connect(args.redis_url)
    cfg = PublishConfig(reasoning_version=args.reasoning_version, redis_url=args.redis_url, split="test")
    clear_progress(client, cfg.reasoning_version)
    first = publish(client, h, present, ids, cfg, histories=hist)
    again = publish(client, h, present, ids, cfg, histories=hist)  # everything done: all batches skipped
    result = {"benchmark": "reasoning_publish", "machine": "2-core CPU sandbox (shared)", "target": where,
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "users": len(ids),
              "K": int(h.shape[1]), "D": int(h.shape[2]), "dtype": cfg.dtype, "batch_size": cfg.batch_size,
              "first_pass": first, "users_per_second": len(ids) / first["seconds"], "resume_pass": again,
              "command": f"OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/reasoning.py --publish-only "
                         f"--redis-url {args.redis_url} --reasoning-version {args.reasoning_version}"}
    write_json(Path(args.results).with_name("beauty_reasoning_publish.json"), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
