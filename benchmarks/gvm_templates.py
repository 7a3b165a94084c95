"""GVM's Generate-Validate step for the paper's manual templates (appendix F: 2-, 3-, 5-step and the Beauty
template): the same users, Figure-9 prompt and sampling as `scoter reason discover`, the <cot_path> fixed to the
template, the model writing the reason and the recommendations; mean Recall@20 against the validation target is
each template's Quality, comparable with the discovered clusters'. Writes benchmarks/results/<ds>_gvm_templates.json.

    OMP_NUM_THREADS=1 python -m benchmarks.gvm_templates --users 16 [--llm http://host:8000/v1]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from benchmarks.harness import RESULTS, provenance, write_result
from scoter.paths import artifacts_root


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
           "templates": results, **provenance(elapsed_s=round(time.perf_counter() - started, 1))}
    write_result(RESULTS / f"{args.dataset}_gvm_templates.json", doc)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
