"""Structured distillation, teacher side (paper 3.3.1, Algorithm 2 step 1): template-shaped chains for
training users, split into their K steps; chains missing a step are rejected and counted."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from offline.reasoning import corpus, grammars, prompts
from offline.reasoning.config import DistillConfig, SamplingParams
from offline.reasoning.llm import LLM
from offline.reasoning.parsing import numbered_lines, split_chain

log = logging.getLogger(__name__)
STEP_STOP = ("\n\n", "\n**", "**")


def teacher_examples(dataset: Any, rows: Sequence[int], *, oracle: bool) -> list[dict[str, Any]]:
    """Inputs the teacher sees. Plain: history seq[:-2] (a train row). Oracle (R2END): history seq[:-3] and
    target seq[-3], so neither the validation nor the test target is ever shown."""
    out = []
    for u in rows:
        seq = dataset.sequences[u]
        if oracle:
            ex = corpus.oracle_example(seq)
            if ex is None:
                continue
            hist, target = ex
            out.append({"row": u, "user": dataset.user_ids[u], "history": hist.tolist(), "target": target})
        else:
            out.append({"row": u, "user": dataset.user_ids[u], "history": corpus.history(seq, "train").tolist()})
    return out


def _chat(dataset: Any, steps: Sequence[str], ex: dict[str, Any], cfg: DistillConfig,
          grounding: Any = None) -> list[dict[str, str]]:
    if cfg.teacher_mode == "structured":
        return prompts.teacher_chat(steps, grounding, ex["history"], next_item=ex.get("target"))
    target = dataset.item_text(ex["target"]) if "target" in ex else None
    return prompts.distill_chat(steps, corpus.texts(dataset, ex["history"]), max_items=cfg.history_items,
                                target_text=target)


def scaffold_generate(llm: LLM, chats: list[list[dict[str, str]]], steps: Sequence[str],
                      params: SamplingParams) -> list[str]:
    """Guided decoding: for step k the answer so far plus '**step_k:** ' is prefilled as the assistant turn and
    the model writes that step only; K batched rounds instead of one free generation."""
    answers = [""] * len(chats)
    for k, step in enumerate(steps):
        prefix = [a + ("\n" if k else "") + f"**{step}:** " for a in answers]
        conts = llm.generate([c + [{"role": "assistant", "content": p}] for c, p in zip(chats, prefix, strict=True)],
                             params.model_copy(update={"seed": None if params.seed is None else params.seed + k}))
        answers = [p + " ".join(t.strip().split()) for p, t in zip(prefix, conts, strict=True)]
    return answers


def teacher_chains(llm: LLM, dataset: Any, steps: Sequence[str], rows: Sequence[int],
                   cfg: DistillConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Teacher chains for `rows`; returns (records with 'steps' or None when rejected, report)."""
    t0 = time.perf_counter()
    tok0 = getattr(llm, "generated_tokens", 0)
    examples = teacher_examples(dataset, rows, oracle=cfg.oracle)
    g = None
    if cfg.teacher_mode == "structured":
        from offline.reasoning.grounding import Grounding

        g = Grounding(dataset)
    chats = [_chat(dataset, steps, ex, cfg, g) for ex in examples]
    if cfg.teacher_mode == "structured":
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.free_max_tokens,
                                seed=cfg.seed, grammar=grammars.numbered_steps(len(steps), step_chars=cfg.step_chars,
                                                                names=steps),
                                line_max_tokens=cfg.step_max_tokens, repetition_penalty=cfg.repetition_penalty)
        raw: list[str] = []
        for s in range(0, len(chats), cfg.chunk_rows):
            if raw and cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                log.warning("teacher: max_seconds reached after %d of %d chains", len(raw), len(chats))
                break
            raw += llm.generate(chats[s:s + cfg.chunk_rows], params)
            el = time.perf_counter() - t0
            log.info("teacher: %d/%d chains in %.0fs (%.0f chains/h)", len(raw), len(chats), el, len(raw) / el * 3600)
        examples = examples[:len(raw)]
        lines = [numbered_lines(t, len(steps)) for t in raw]  # well formed by the grammar; rebuilt as a chain
        texts = [prompts.format_chain(steps, ln) if ln else t for ln, t in zip(lines, raw, strict=True)]
    elif cfg.teacher_mode == "scaffold":
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.step_max_tokens,
                                seed=cfg.seed, stop=STEP_STOP)
        texts = scaffold_generate(llm, chats, steps, params)
    else:
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.free_max_tokens,
                                seed=cfg.seed)
        texts = llm.generate(chats, params)
    rejected = 0
    for ex, text in zip(examples, texts, strict=True):
        ex["raw"] = text
        ex["steps"] = split_chain(text, steps)
        rejected += ex["steps"] is None
    report = {"teacher_users": len(examples), "accepted": len(examples) - rejected, "rejected": rejected,
              "rejected_rate": rejected / max(len(examples), 1), "mode": cfg.teacher_mode, "oracle": cfg.oracle,
              "seconds": time.perf_counter() - t0, "template": list(steps)}
    if hasattr(llm, "tokens_per_second"):
        report["tokens_per_second"] = llm.tokens_per_second
        report["generated_tokens"] = llm.generated_tokens - tok0
    report["chains_per_hour"] = report["accepted"] / max(report["seconds"], 1e-9) * 3600
    log.info("teacher: %d accepted, %d rejected (%s, oracle=%s) in %.0fs", report["accepted"], rejected,
             cfg.teacher_mode, cfg.oracle, report["seconds"])
    return examples, report
