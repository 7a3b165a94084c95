"""GVM's Generate-Validate step for the paper's manual templates (appendix F: 2-, 3-, 5-step and the Beauty
template): the same users, Figure-9 prompt and sampling as `scoter reason discover`, the <cot_path> fixed to the
template, the model writing the reason and the recommendations; mean Recall@20 against the validation target is
each template's Quality, comparable with the discovered clusters'. Writes benchmarks/results/<ds>_gvm_templates.json.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/gvm_templates.py --users 16 [--llm http://host:8000/v1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import sys
import time

from scoter.io import write_json_atomic
from scoter.paths import REPO_ROOT, artifacts_root
from scoter.provenance import git_commit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--templates", default="two_step,three_step,five_step,beauty_paper")
    ap.add_argument("--llm", default="local", help="'local' (SmolLM2-135M) or an OpenAI-compatible URL")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from offline.reasoning import corpus
    from offline.reasoning.config import GVMConfig
    from offline.reasoning.gvm import load_template, validate_template
    from offline.reasoning.llm import build_llm

    torch.set_num_threads(1)
    started = time.perf_counter()
    ds = corpus.load(args.dataset)
    cache = artifacts_root() / args.dataset / "reasoning" / "llm_cache.jsonl"
    llm = build_llm(args.llm, cache_path=cache)
    cfg = GVMConfig(dataset=args.dataset, users=args.users, reason_max_tokens=64, recs_max_tokens=160)
    results = {}
    for name in args.templates.split(","):
        results[name] = validate_template(cfg, llm, ds, load_template(name))
        logging.info("%s: %s", name, json.dumps(results[name]))
    doc = {"benchmark": "gvm_templates", "dataset": args.dataset, "llm": args.llm, "config": cfg.model_dump(),
           "templates": results, "command": "PYTHONPATH=. python " + " ".join(sys.argv),
           "machine": f"{platform.machine()} CPU sandbox", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "git_commit": git_commit(), "elapsed_s": round(time.perf_counter() - started, 1)}
    out = REPO_ROOT / "benchmarks" / "results" / f"{args.dataset}_gvm_templates.json"
    write_json_atomic(out, doc)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
