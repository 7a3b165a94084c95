"""Host-side cost of one decode step of fastgen.Decoder, the model left out: a runtime that hands back ready logits
(random, fixed per batch size) stands in for the forward, so what is timed is the rest of a step (grammar
matchers' token masks, the repetition penalty, the per-line cap, top-k and nucleus sampling, accepting each
token). On a GPU the forward of a 135M model takes a few milliseconds per step, so this is the ceiling the host
puts on generated tokens/s there; on a CPU it is the part of a step that is not the model.

  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/decoder_host.py [--batch-sizes 32,128,256,512]"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import time
from typing import Any

import numpy as np

from scoter.paths import REPO_ROOT
from scoter.provenance import git_commit, machine

TEMPLATE = ["Analyze Item Tags", "Predict Interest Patterns", "Analyze Product Types", "Item Recommendation"]


class ReadyLogits:
    """A Runtime whose logits are made before the clock starts (one block per batch size, rows reused)."""

    def __init__(self, vocab_size: int, rows: int, seed: int = 0) -> None:
        import torch

        self.vocab_size = vocab_size
        g = torch.Generator().manual_seed(seed)
        self.block = torch.randn((rows, vocab_size), generator=g) * 3

    def prefix(self, ids: list[int]) -> Any:
        return None

    def start(self, prefix_state: Any, suffixes: list[list[int]]) -> Any:
        return self.block[:len(suffixes)].clone()

    def add(self, prefix_state: Any, suffixes: list[list[int]]) -> Any:
        return self.block[:len(suffixes)].clone()

    def step(self, tokens: np.ndarray) -> Any:
        return self.block[:len(tokens)].clone()

    def keep(self, rows: np.ndarray) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="32,128,256,512")
    ap.add_argument("--steps", type=int, default=48, help="tokens per row (the grammar may end a row sooner)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "decoder_host_overhead.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from offline.reasoning.config import GVMConfig, smollm2_location
    from offline.reasoning.fastgen import Decoder, GenRequest
    from offline.reasoning.gvm import answer_grammar
    from offline.reasoning.local_backend import load_causal_lm
    from scoter.io import write_json

    _, tok = load_causal_lm(*smollm2_location())
    cfg = GVMConfig()
    grammar = answer_grammar(cfg, TEMPLATE)  # Validate's answer grammar with the mined template
    vocab = len(tok)
    rows: dict[str, Any] = {}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        for arm, g in (("validate grammar", grammar), ("no grammar", None)):
            dec = Decoder(ReadyLogits(vocab, bs), tok, batch_size=bs)
            reqs = [GenRequest(ids=[1, 2, 3 + i % 5], max_tokens=args.steps, grammar=g,
                               line_max_tokens=cfg.line_max_tokens) for i in range(bs)]
            dec.generate(reqs[:2], seed=0)  # compiles the grammar outside the clock
            per_step = []
            for r in range(args.repeats):
                before = dec.stats.generated_tokens
                t0 = time.perf_counter()
                dec.generate(reqs, temperature=cfg.temperature, top_p=cfg.top_p, seed=r,
                             repetition_penalty=cfg.repetition_penalty)
                wall = time.perf_counter() - t0
                per_step.append((wall, dec.stats.generated_tokens - before))
            ms = statistics.median(w / (n / bs) * 1000 for w, n in per_step)  # per step of a full batch
            rows[f"{arm} : {bs}"] = {"batch": bs, "grammar": g is not None, "ms_per_step_median": ms,
                                     "host_tokens_per_s_median": statistics.median(n / w for w, n in per_step),
                                     "runs": [{"seconds": w, "tokens": n} for w, n in per_step]}
            print(f"{arm:17s} batch {bs:4d}: {ms:7.1f} ms/step, "
                  f"{rows[f'{arm} : {bs}']['host_tokens_per_s_median']:8.0f} tok/s host ceiling")
    write_json(args.out, {"benchmark": "decoder_host_overhead", "machine": machine(), "threads":
                          torch.get_num_threads(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                          "git_commit": git_commit(), "command": "OMP_NUM_THREADS=1 PYTHONPATH=. python "
                          "benchmarks/decoder_host.py --batch-sizes " + args.batch_sizes, "steps": args.steps,
                          "rows": rows})
    print(json.dumps({k: round(v["ms_per_step_median"], 1) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
