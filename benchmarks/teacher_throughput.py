"""Teacher throughput per decoder runtime, side by side: the distillation teacher's own requests (grounded and
hindsight prompts on Beauty, built by offline/reasoning/distill.py exactly as `benchmarks/reasoning.py --stage
teacher` builds them, with its grammar, per-line cap and sampling) run through the batched decoder with each
candidate runtime and batch size. Candidates are interleaved round by round (A B C, A B C, ...) so machine noise
on the shared CPU hits all alike; the ratios inside one run are what count.

Reported per candidate (median over rounds): generated tokens/s (wall time of the whole generate call, prefill
and grammar work included), prompt tokens/s, chains/hour (well-formed chains only) and the share of well-formed
chains (every template step present, as the teacher's rejection rule counts them), plus the prompt token counts.

Candidates are `runtime:batch` with runtime one of
  transformers        the model's own forward + DynamicCache (TorchRuntime), float32
  transformers-int8   the same with torch's dynamic int8 quantisation of every Linear layer (per-tensor weights)
  transformers-int8pc the same with per-channel int8 weights
  llama-float32       fastgen.LlamaRuntime, float32 weights (transformers' greedy tokens)
  llama-bfloat16      fastgen.LlamaRuntime, bfloat16 weights
  ortgenai            onnxruntime-genai on the model converted by its builder (--ort-model-dir), driven as a
                      whole batch: every row is prefilled in full (no shared prefix cache) and stays in the batch
                      until the last row ends (its API has no row removal); the decoder's grammar masks, caps and
                      sampling pick each token and the generator is told it through one-hot logits

  ortgenai needs `pip install onnxruntime-genai` and a converted model, e.g.
      python -m onnxruntime_genai.models.builder -i <de-quantised HF dir> -o <out> -p int4 -e cpu
  with "pad_token_id" in <out>/genai_config.json set to a token no prompt contains (SmolLM2: 0; its default pad
  id 2 is <|im_end|>, which every chat prompt contains) and "intra_op_num_threads": 1 in its session_options.

  OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.teacher_throughput --requests 64 --rounds 2 --candidates \\
      transformers:32,transformers:64,transformers-int8:32,llama-float32:32,llama-bfloat16:32,llama-bfloat16:64
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, provenance, write_result

log = logging.getLogger("benchmarks.teacher_throughput")
RUNTIMES = ("transformers", "transformers-int8", "transformers-int8pc", "llama-float32", "llama-bfloat16", "ortgenai")


class OrtGenaiRuntime:
    """onnxruntime-genai behind the decoder's Runtime interface, as far as its Generator allows: `prefix` keeps
    only the token ids (no cache to share), `start` prefills whole prompts (left-padded with `pad_id`), `keep`
    only records which rows the decoder still reads (the generator keeps computing the rest), `step` hands the
    chosen tokens over as one-hot logits and reads the next logits."""

    def __init__(self, model_dir: str, pad_id: int, vocab_size: int, max_new: int = 400) -> None:
        import onnxruntime_genai as og

        self.og, self.pad, self.max_new = og, pad_id, max_new
        self.model = og.Model(model_dir)
        self.vocab_size = vocab_size
        self.gen: Any = None
        self.rows = np.zeros(0, np.int64)

    def _logits(self) -> np.ndarray:
        lg = np.asarray(self.gen.get_logits())
        lg = lg.reshape(lg.shape[0], -1, lg.shape[-1])[:, -1]
        return lg[self.rows]

    def prefix(self, ids: list[int]) -> Any:
        return list(ids)

    def start(self, prefix_state: Any, suffixes: list[list[int]]) -> np.ndarray:
        prompts = [prefix_state + s for s in suffixes]
        b, w = len(prompts), max(len(x) for x in prompts)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=w + self.max_new, batch_size=b, do_sample=False)
        self.gen = self.og.Generator(self.model, params)
        ids = np.full((b, w), self.pad, np.int32)
        for r, x in enumerate(prompts):
            ids[r, w - len(x):] = x
        self.gen.append_tokens(ids)
        self.rows = np.arange(b)
        return self._logits()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        b = self.gen.get_logits().shape[0]
        full = np.full(b, self.pad, np.int64)
        full[self.rows] = tokens
        onehot = np.full((b, self.vocab_size), -1e9, np.float32)
        onehot[np.arange(b), full] = 0.0
        self.gen.set_logits(onehot)
        self.gen.generate_next_token()
        return self._logits()

    def keep(self, rows: np.ndarray) -> None:
        self.rows = self.rows[rows]


def parse_candidates(spec: str) -> list[tuple[str, int]]:
    out = []
    for part in spec.split(","):
        name, _, bs = part.strip().partition(":")
        if name not in RUNTIMES:
            raise ValueError(f"--candidates: runtime {name!r} is not one of {RUNTIMES}")
        if not bs.isdigit() or int(bs) < 1:
            raise ValueError(f"--candidates: {part!r} needs a batch size, e.g. {name}:32")
        out.append((name, int(bs)))
    return out


def teacher_requests(args: argparse.Namespace) -> tuple[dict[str, list[list[dict[str, str]]]], list[str], Any]:
    """Chats per prompt variant for the first --requests sampled training users (the teacher stage's sampling),
    the template's steps and the teacher's sampling parameters."""
    from offline.reasoning import corpus, distill, grammars
    from offline.reasoning.config import DistillConfig, SamplingParams
    from offline.reasoning.grounding import Grounding
    from offline.reasoning.gvm import load_template

    ds = corpus.load(args.dataset)
    steps = load_template(args.template, Path(args.gvm_dir) if args.gvm_dir else None)
    g = Grounding(ds)
    chats: dict[str, list[list[dict[str, str]]]] = {}
    for variant in args.variants.split(","):
        if variant not in ("grounded", "hindsight"):
            raise ValueError(f"--variants: {variant!r} is not grounded or hindsight")
        cfg = DistillConfig(dataset=args.dataset, teacher_users=args.requests, oracle=variant == "hindsight",
                            teacher_mode="structured", step_max_tokens=24)  # the teacher stage's settings
        rows = corpus.sample_users(ds, cfg.teacher_users, cfg.seed + 1)
        examples = distill.teacher_examples(ds, rows, oracle=cfg.oracle)
        chats[variant] = [distill._chat(ds, steps, ex, cfg, g) for ex in examples]
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.free_max_tokens,
                            seed=cfg.seed, grammar=grammars.numbered_steps(len(steps), step_chars=cfg.step_chars),
                            line_max_tokens=cfg.step_max_tokens, repetition_penalty=cfg.repetition_penalty)
    return chats, steps, params


def build_runtime(name: str, model: Any, ort_model_dir: str | None = None, pad_id: int = 0) -> Any:
    import torch

    from offline.reasoning.fastgen import LlamaRuntime, TorchRuntime

    if name == "ortgenai":
        if not ort_model_dir:
            raise ValueError("--ort-model-dir: required for candidate ortgenai (the builder's output folder)")
        return OrtGenaiRuntime(ort_model_dir, pad_id, int(model.config.vocab_size))
    if name == "transformers":
        return TorchRuntime(model, threads=1)
    if name in ("transformers-int8", "transformers-int8pc"):
        qconfig = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig if name.endswith("pc")
                   else torch.ao.quantization.default_dynamic_qconfig}
        return TorchRuntime(torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), qconfig), threads=1)
    return LlamaRuntime(model, threads=1, dtype=name.split("-", 1)[1])


def well_formed(text: str, steps: list[str]) -> bool:
    """The teacher's rule: every step present with a word in it (distill.teacher_chains)."""
    from offline.reasoning.parsing import numbered_lines, split_chain
    from offline.reasoning.prompts import format_chain

    lines = numbered_lines(text, len(steps))
    return split_chain(format_chain(steps, lines) if lines else text, steps) is not None


def _decoder(runtime: Any, tok: Any, grammars: Any, batch: int) -> Any:
    from offline.reasoning.fastgen import Decoder

    dec = Decoder(runtime, tok, batch_size=batch)
    dec._grammars = grammars  # compiled once per process, not per run
    return dec


def run_once(runtime: Any, tok: Any, grammars: Any, reqs: dict[str, list[Any]], params: Any, batch: int,
             steps: list[str]) -> dict[str, Any]:
    from offline.reasoning.gvm import degenerate

    dec = _decoder(runtime, tok, grammars, batch)
    texts: list[str] = []
    t0 = time.perf_counter()
    for rs in reqs.values():  # one generate call per variant, as the teacher stage makes them
        out = dec.generate(rs, temperature=params.temperature, top_p=params.top_p, seed=params.seed,
                           repetition_penalty=params.repetition_penalty)
        texts += [tok.decode(g, skip_special_tokens=True) for g in out]
    wall = time.perf_counter() - t0
    ok = [well_formed(t, steps) for t in texts]
    st = dec.stats
    return {"wall_s": wall, "generated_tokens": st.generated_tokens, "prompt_tokens": st.prompt_tokens,
            "prefix_tokens_reused": st.prefix_tokens_reused, "chains": len(texts),
            "tokens_per_s": st.generated_tokens / wall, "prompt_tokens_per_s": st.prompt_tokens / wall,
            "well_formed_rate": float(np.mean(ok)), "chains_per_hour": sum(ok) / wall * 3600,
            "degenerate_rate": float(np.mean([degenerate(t) for t in texts])), "sample": texts[0]}


def greedy_agreement(runtimes: dict[str, Any], tok: Any, grammars: Any, reqs: dict[str, list[Any]], params: Any,
                     batch: int, steps: list[str], ref: str = "llama-float32") -> dict[str, Any]:
    """How far each runtime's greedy chains follow float32's: the share of identical chains and of tokens before
    the first difference (a faster runtime that writes other text is another model, not a faster teacher)."""
    def greedy(rt: Any) -> list[list[int]]:
        dec = _decoder(rt, tok, grammars, batch)
        return [g for rs in reqs.values() for g in dec.generate(rs, temperature=0.0, top_p=1.0,
                                                                  repetition_penalty=params.repetition_penalty)]

    def lead(a: list[int], b: list[int]) -> float:
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return n / max(len(a), 1)

    want = greedy(runtimes[ref])
    out = {}
    for name, rt in runtimes.items():
        got = want if name == ref else greedy(rt)
        texts = [tok.decode(g, skip_special_tokens=True) for g in got]
        out[name] = {"identical_chains": float(np.mean([a == b for a, b in zip(want, got, strict=True)])),
                     "tokens_before_first_difference": float(np.mean([lead(a, b) for a, b in
                                                                       zip(want, got, strict=True)])),
                     "well_formed_rate": float(np.mean([well_formed(t, steps) for t in texts])),
                     "sample": texts[0]}
        log.info("greedy %s vs %s: identical %.2f, lead %.2f", name, ref, out[name]["identical_chains"],
                 out[name]["tokens_before_first_difference"])
    return out


def prompt_counts(reqs: dict[str, list[Any]]) -> dict[str, Any]:
    from offline.reasoning.fastgen import common_prefix

    out = {}
    for variant, rs in reqs.items():
        lens = [len(r.ids) for r in rs]
        p = common_prefix([r.ids for r in rs])
        out[variant] = {"requests": len(rs), "mean": float(np.mean(lens)), "min": min(lens), "max": max(lens),
                        "shared_prefix": p, "mean_suffix": float(np.mean(lens)) - p}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--requests", type=int, default=64, help="teacher requests per prompt variant")
    ap.add_argument("--variants", default="hindsight,grounded")
    ap.add_argument("--template", default="three_step", help="a manual template, or discovered with --gvm-dir")
    ap.add_argument("--gvm-dir", default=None)
    ap.add_argument("--candidates", default="transformers:32,llama-bfloat16:32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ort-model-dir", default=None, help="onnxruntime-genai model folder (candidate ortgenai)")
    ap.add_argument("--ort-pad-id", type=int, default=0, help="a token id no prompt contains (ortgenai padding)")
    ap.add_argument("--agreement", action="store_true",
                    help="also decode greedily with each runtime and compare with llama-float32's chains")
    ap.add_argument("--out", default=str(RESULTS / "teacher_throughput.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from offline.reasoning.config import LocalLLMConfig
    from offline.reasoning.fastgen import GrammarCache
    from offline.reasoning.local_backend import gen_requests, load_causal_lm

    torch.set_num_threads(1)
    cands = parse_candidates(args.candidates)
    chats, steps, params = teacher_requests(args)
    cfg = LocalLLMConfig()
    model, tok = load_causal_lm(*cfg.resolved())
    reqs = {v: gen_requests(tok, c, params, cfg.max_input_tokens) for v, c in chats.items()}
    counts = prompt_counts(reqs)
    log.info("prompt tokens: %s", counts)
    runtimes = {name: build_runtime(name, model, args.ort_model_dir, args.ort_pad_id)
                for name in dict.fromkeys(n for n, _ in cands)}
    grammars = GrammarCache(tok, int(model.config.vocab_size))
    grammars.get(params.grammar)
    runs: dict[str, list[dict[str, Any]]] = {f"{n}:{b}": [] for n, b in cands}
    for r in range(args.rounds):
        for name, bs in cands:
            res = run_once(runtimes[name], tok, grammars, reqs, params, bs, steps)
            runs[f"{name}:{bs}"].append(res)
            log.info("round %d %s:%d  %.1f gen tok/s, %.0f prompt tok/s, %.0f chains/h, well-formed %.2f (%.0fs)",
                     r + 1, name, bs, res["tokens_per_s"], res["prompt_tokens_per_s"], res["chains_per_hour"],
                     res["well_formed_rate"], res["wall_s"])
    agreement = None
    if args.agreement:
        runtimes.setdefault("llama-float32", build_runtime("llama-float32", model))
        agreement = greedy_agreement(runtimes, tok, grammars, reqs, params, cands[0][1], steps)
    keys = ("tokens_per_s", "prompt_tokens_per_s", "chains_per_hour", "well_formed_rate", "degenerate_rate",
            "wall_s")
    summary = {k: {m: statistics.median(x[m] for x in v) for m in keys} for k, v in runs.items()}
    base = next(iter(summary))
    for v in summary.values():
        v["speedup_vs_" + base] = v["tokens_per_s"] / summary[base]["tokens_per_s"]
    doc = {**provenance(device="CPU, 1 thread per runtime (OMP_NUM_THREADS=1), shared with other jobs"),
           "benchmark": "teacher_throughput", "dataset": args.dataset, "template": steps,
           "variants": list(reqs), "requests_per_variant": args.requests, "rounds": args.rounds,
           "model": "SmolLM2-135M-Instruct (packaged GGUF, de-quantised)",
           "sampling": params.model_dump(exclude={"grammar"}), "prompt_tokens": counts, "summary": summary,
           "greedy_agreement_with_float32": agreement, "runs": runs}
    write_result(args.out, doc)
    for k, v in summary.items():
        print(f"{k:24s} {v['tokens_per_s']:7.1f} gen tok/s {v['prompt_tokens_per_s']:7.0f} prompt tok/s "
              f"{v['chains_per_hour']:7.0f} chains/h  well-formed {v['well_formed_rate']:.2f}  "
              f"x{v['speedup_vs_' + base]:.2f}")


if __name__ == "__main__":
    main()
