"""Per-worker throughput of the offline stages, 1 worker against 2 side by side on this machine, for sizing
scale-out: SASRec training under torchrun (training examples/s of the batch loop, 1 process vs 2 with the same
global batch), H encoding with the encoder student (users/s, `encode_shard`), and publishing H to a private
redis-server (users/s, `publish` with shards). Each pair of 1- and 2-worker runs is interleaved and repeated, so
a busy shared CPU loads both alike; medians and standard errors over the repeats. Teacher tokens/s is read from
benchmarks/results/beauty_reasoning.json (the local model behind one endpoint) when present.

    python -m benchmarks.scale_out [--repeats 3] [--dataset beauty] [--out benchmarks/results/scale_out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, ROOT, median_se, provenance, write_result
from scoter.testing import redis_server

log = logging.getLogger("benchmarks.scale_out")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}
K_STEPS = 5
BLOCK = 4096  # the student's inference chunk: shards encode exactly the bytes one worker would


# -- workers (one process each) --------------------------------------------------------------------------------
def worker_encode(args: argparse.Namespace) -> None:
    """Encode one shard of the dataset's users with an encoder student (frozen MiniLM item vectors + head: the
    head's weights do not change the cost); writes {"users", "seconds"} of the encoding itself."""
    import copy

    import torch

    from offline.reasoning import corpus
    from offline.reasoning.config import EncoderStudentConfig
    from offline.reasoning.encode import Shard, encode_shard, sentence_encoder, student_h_of_rows
    from offline.reasoning.students import EncoderStudent

    torch.set_num_threads(1)
    ds = corpus.load(args.dataset)
    cfg = EncoderStudentConfig()
    student = EncoderStudent(copy.deepcopy(sentence_encoder()), K_STEPS, cfg)
    shard = Shard.parse(args.shard, BLOCK)
    h_of_rows = student_h_of_rows(student, ds, cfg)
    h_of_rows("test", shard.rows(10))  # warm: item embeddings loaded, first matmul done
    h_of_rows = student_h_of_rows(student, ds, cfg)
    t0 = time.perf_counter()
    encode_shard(h_of_rows, ds.user_ids, Path(args.out), shard)
    _report(args.report, users=len(shard.rows(ds.n_users)), seconds=time.perf_counter() - t0)


def worker_publish(args: argparse.Namespace) -> None:
    """Publish one shard folder's test H (float16, 512-user MULTI/EXEC batches)."""
    import redis

    from offline.reasoning.config import PublishConfig
    from offline.reasoning.encode import read_shard
    from offline.reasoning.publish import publish
    from scoter.h_folder import read_published_split

    shard, rows = read_shard(args.out)
    h, present, ids = read_published_split(args.out, "test")
    client = redis.Redis.from_url(args.redis_url)
    cfg = PublishConfig(reasoning_version=args.version, redis_url=args.redis_url, batch_size=512)
    t0 = time.perf_counter()
    rep = publish(client, np.asarray(h), present, ids, cfg, shard=shard, rows=rows, created_at=1_700_000_000)
    _report(args.report, users=rep["values_written"], seconds=time.perf_counter() - t0)


def _report(path: str, **doc: Any) -> None:
    Path(path).write_text(json.dumps(doc))


# -- driver ---------------------------------------------------------------------------------------------------
def run_workers(cmds: list[list[str]]) -> None:
    procs = [subprocess.Popen(c, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    for p, c in zip(procs, cmds, strict=True):
        _, err = p.communicate(timeout=1800)
        if p.returncode:
            raise RuntimeError(f"{' '.join(c)} failed ({p.returncode}):\n{err[-3000:]}")


def me(*extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.scale_out", *extra]


def synthetic_sequences(folder: Path, n_users: int, n_items: int, length: int, seed: int = 0) -> None:
    """Users walking item cycles of random strides: a learnable pattern with realistic shapes for the batch loop."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        start, stride = int(rng.integers(0, n_items)), int(rng.integers(1, 4))
        lines.append(f"u{u} " + " ".join(str((start + stride * t) % n_items + 1) for t in range(length)))
    folder.mkdir(parents=True)
    (folder / "sequences.txt").write_text("\n".join(lines) + "\n")


def bench_ddp(tmp: Path, repeats: int, n_users: int, epochs: int) -> dict[str, Any]:
    synthetic_sequences(tmp / "data" / "synth", n_users, 2000, 22)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    common = ["-m", "scoter.cli", "train", "sasrec", "--dataset", "synth", "--data-root", str(tmp / "data"),
              "--hidden", "64", "--n-layers", "2", "--dropout", "0.2", "--batch-size", "256", "--epochs",
              str(epochs), "--patience", str(epochs), "--threads", "1", "--no-resume"]
    rates: dict[int, list[float]] = {1: [], 2: []}
    final: dict[int, dict[str, float]] = {}
    for r in range(repeats):
        for nproc in (1, 2):  # interleaved: both see the same background load
            out = tmp / f"ddp-{nproc}-{r}"
            cmd = ([sys.executable, *common] if nproc == 1 else
                   [torchrun, "--standalone", f"--nproc-per-node={nproc}", *common])
            run_workers([[*cmd, "--out", str(out)]])
            doc = json.loads((out / "results.json").read_text())
            n_examples = doc["dataset"]["users"]  # all-position rows: one per user
            per_epoch = [n_examples / h["train_s"] for h in doc["history"][1:]]  # epoch 1 warms up
            rates[nproc].append(float(np.median(per_epoch)))
            final[nproc] = {"valid_recall@10": doc["metrics"]["valid"]["overall"]["recall@10"],
                            "test_recall@10": doc["metrics"]["test"]["overall"]["recall@10"],
                            "last_loss": doc["history"][-1]["loss"]}
            log.info("DDP %d process(es), repeat %d: %.0f sequences/s", nproc, r + 1, rates[nproc][-1])
    ratio = [b / a for a, b in zip(rates[1], rates[2], strict=True)]
    return {"what": "SASRec all-position training, batch loop only (evaluation excluded), global batch 256, "
                    "hidden 64, 2 layers, history 20; one training row = one user sequence",
            "users": n_users, "epochs": epochs,
            "sequences_per_s_1_process": median_se(rates[1], 1), "sequences_per_s_2_processes": median_se(rates[2], 1),
            "speedup_2_over_1": median_se(ratio, 3), "per_repeat": rates,
            "last_run_metrics": final}


def bench_pair(kind: str, tmp: Path, repeats: int, extra: dict[str, list[str]]) -> dict[str, Any]:
    """users/s of one worker alone and of each of two workers running at once, interleaved."""
    one_rate, two_rate, two_total = [], [], []
    for r in range(repeats):
        for n in (1, 2):
            reports = [tmp / f"{kind}-{n}-{r}-{i}.json" for i in range(n)]
            run_workers([me(f"--worker={kind}", "--shard", f"{i}/{n}", "--report", str(reports[i]),
                            *extra[f"{n}-{r}-{i}"]) for i in range(n)])
            docs = [json.loads(p.read_text()) for p in reports]
            rates = [d["users"] / d["seconds"] for d in docs]
            if n == 1:
                one_rate.append(rates[0])
            else:
                two_rate.append(float(np.mean(rates)))
                two_total.append(sum(d["users"] for d in docs) / max(d["seconds"] for d in docs))
            log.info("%s %d worker(s), repeat %d: %s users/s", kind, n, r + 1, [round(x) for x in rates])
    return {"users_per_s_1_worker": median_se(one_rate, 1), "users_per_s_per_worker_2_at_once": median_se(two_rate, 1),
            "users_per_s_2_workers_total": median_se(two_total, 1),
            "speedup_2_over_1": median_se([b / a for a, b in zip(one_rate, two_total, strict=True)], 3)}


def teacher_tokens() -> dict[str, Any] | None:
    path = RESULTS / "beauty_reasoning.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    tps = (doc.get("teacher") or {}).get("tokens_per_second")
    return None if tps is None else {"tokens_per_s_per_endpoint": tps, "source": str(path.relative_to(ROOT)),
                                     "llm": doc.get("llm"), "machine": doc.get("machine"), "date": doc.get("date"),
                                     "git_commit": doc.get("git_commit")}


def sizing(doc: dict[str, Any]) -> dict[str, Any]:
    """Hours each stage needs for 1, 10 and 100 million users on N workers, computed from this file's measured
    per-worker rates (the rate of one worker while two ran at once: the contended, conservative one) by dividing
    the work evenly over N workers. An extrapolation, not a measurement: it assumes per-worker rates stay at what
    2 workers showed here, and that Redis (publish) and the all-reduce (training) keep up."""
    rates: dict[str, float] = {}
    if "training" in doc:  # one all-position training row per user: an epoch is one pass over the users
        rates["training_epoch"] = doc["training"]["sequences_per_s_2_processes"]["median"] / 2
    if "h_encoding" in doc:
        rates["h_encoding"] = doc["h_encoding"]["users_per_s_per_worker_2_at_once"]["median"]
    if "publish" in doc:
        rates["publish"] = doc["publish"]["users_per_s_per_worker_2_at_once"]["median"]
    out: dict[str, Any] = {"how": sizing.__doc__.split("\n\n")[0] if sizing.__doc__ else "",
                           "per_worker_rate_users_per_s": rates, "hours": {}}
    teacher = doc.get("teacher")
    tokens_per_user = None
    if teacher:
        src = json.loads((ROOT / teacher["source"]).read_text())["teacher"]
        tokens_per_user = src["tokens_per_second"] * src["seconds"] / max(src["teacher_users"], 1)
        out["teacher_tokens_per_user"] = tokens_per_user
        rates["teacher_1pct_sample"] = teacher["tokens_per_s_per_endpoint"] / tokens_per_user * 100
    for stage, rate in rates.items():
        out["hours"][stage] = {f"{users // 1_000_000}M users": {f"{n} workers": users / (rate * n) / 3600
                                                                for n in (1, 8, 64)}
                               for users in (1_000_000, 10_000_000, 100_000_000)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dataset", default="beauty", help="users to encode and publish")
    ap.add_argument("--ddp-users", type=int, default=4096)
    ap.add_argument("--ddp-epochs", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], choices=["ddp", "encode", "publish"])
    ap.add_argument("--out", type=Path, default=RESULTS / "scale_out.json")
    ap.add_argument("--sizing-only", action="store_true", help="recompute the sizing block of --out")
    ap.add_argument("--worker", choices=["encode", "publish"], help=argparse.SUPPRESS)
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", dest="out_dir", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--version", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.worker:
        args.out = args.out_dir
        {"encode": worker_encode, "publish": worker_publish}[args.worker](args)
        return
    if args.sizing_only:
        doc = json.loads(args.out.read_text())
        doc["sizing"] = sizing(doc)
        write_result(args.out, doc)
        return
    doc: dict[str, Any] = {"benchmark": "scale_out", **provenance(),
                           "note": "1 and 2 workers measured interleaved on the same shared, busy CPU; "
                                   "each worker uses 1 thread"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "ddp" not in args.skip:
            doc["training"] = bench_ddp(tmp, args.repeats, args.ddp_users, args.ddp_epochs)
        shard_dirs = {f"{n}-{r}": tmp / f"h-{n}-{r}" for n in (1, 2) for r in range(args.repeats)}
        if "encode" not in args.skip:
            extra = {f"{k}-{i}": ["--dataset", args.dataset, "--out-dir", str(d)]
                     for k, d in shard_dirs.items() for i in range(2)}
            doc["h_encoding"] = {"what": f"encoder student H (K={K_STEPS}, D=384; all 3 splits) of {args.dataset} "
                                         f"users, shards of {BLOCK}-row blocks",
                                 **bench_pair("encode", tmp, args.repeats, extra)}
        if "publish" not in args.skip and "encode" not in args.skip:
            with redis_server(tmp) as (_, url):
                extra = {f"{k}-{i}": ["--out-dir", str(d / f"shard-{i:05d}-of-{int(k[0]):05d}"), "--redis-url", url,
                                      "--version", f"bench-{k}"]
                         for k, d in shard_dirs.items() for i in range(int(k[0]))}
                doc["publish"] = {"what": "test-split H, float16, 512-user MULTI/EXEC batches, to a private "
                                          "redis-server on this machine (it shares the CPU)",
                                  **bench_pair("publish", tmp, args.repeats, extra)}
    doc["teacher"] = teacher_tokens()
    doc["sizing"] = sizing(doc)
    write_result(args.out, doc)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
