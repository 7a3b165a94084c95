"""The teacher's grammar, side by side on the same hindsight prompts (Beauty, `three_step`, SmolLM2-135M, one
thread): numbered lines only ("1. text") against lines that open with their step's name ("1. User Profile
Summary: text", the default). Left to itself the 135M model writes the step's name as the step's whole text, and
such chains are rejected. Two rounds, each on its own 48 users, arms interleaved on the same prompts.

    OMP_NUM_THREADS=1 python -m benchmarks.teacher_grammar
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from benchmarks.harness import RESULTS, provenance, write_result
from offline.reasoning import corpus, grammars, prompts
from offline.reasoning.config import DistillConfig, LocalLLMConfig, SamplingParams
from offline.reasoning.distill import _chat, teacher_examples
from offline.reasoning.grounding import Grounding
from offline.reasoning.local_backend import LocalLLM
from offline.reasoning.parsing import numbered_lines, split_chain

log = logging.getLogger("teacher_grammar")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=48, help="prompts per round and arm")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "beauty_teacher_grammar.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    ds = corpus.load("beauty")
    g = Grounding(ds)
    steps = list(prompts.MANUAL_TEMPLATES["three_step"])
    cfg = DistillConfig(template="three_step", oracle=True, teacher_mode="structured", step_max_tokens=24)
    n = args.users * args.rounds
    rows = corpus.sample_users(ds, n, 99)
    chats = [_chat(ds, steps, e, cfg, g) for e in teacher_examples(ds, rows, oracle=True)]
    llm = LocalLLM(LocalLLMConfig(batch_size=32))
    arms: dict[str, dict] = {"numbered": {"names": None}, "named (default)": {"names": steps}}
    for arm in arms.values():
        arm.update(prompts=0, accepted=0, seconds=0.0, tokens=0, examples=[])
    for r in range(args.rounds):
        batch = chats[r * args.users:(r + 1) * args.users]
        for name, arm in arms.items():
            params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.free_max_tokens,
                                    seed=cfg.seed, line_max_tokens=cfg.step_max_tokens,
                                    repetition_penalty=cfg.repetition_penalty,
                                    grammar=grammars.numbered_steps(3, step_chars=cfg.step_chars, names=arm["names"]))
            tok0, t0 = llm.generated_tokens, time.perf_counter()
            raw = llm.generate(batch, params)
            arm["seconds"] += time.perf_counter() - t0
            arm["tokens"] += llm.generated_tokens - tok0
            texts = [prompts.format_chain(steps, ln) if (ln := numbered_lines(t, 3)) else t for t in raw]
            kept = [c for c in (split_chain(t, steps) for t in texts) if c is not None]
            arm["prompts"] += len(batch)
            arm["accepted"] += len(kept)
            arm["examples"] = arm["examples"] or [dict(zip(steps, c, strict=True)) for c in kept[:3]]
            log.info("round %d %s: %d/%d accepted", r, name, len(kept), len(batch))
    for arm in arms.values():
        arm.update(accepted_share=arm["accepted"] / arm["prompts"],
                   accepted_chains_per_hour=arm["accepted"] / arm["seconds"] * 3600,
                   generated_tokens_per_s=arm["tokens"] / arm["seconds"])
    write_result(args.out, {"benchmark": "teacher_grammar", **provenance(), "template": steps, "arms": arms})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
