"""Batched decoding for small local models on a CPU: the prompts' shared token prefix (the instruction) is run
once and its KV cache reused by every row; each row's own suffix is then run in one padded pass, and decoding
proceeds one token per row per step until the row's grammar terminates, its token cap is hit, a stop string
appears or EOS is sampled. Finished rows leave the batch, so the cost follows the live rows.

Structure comes from xgrammar (a compiled EBNF grammar per request, applied as a token bitmask), so a 135M
model writes well-formed `<cot_path>` / `<reason>` / `<recommendations>` answers; `line_max_tokens` caps each
line (each template step or section is one line) by forcing the newline once the grammar allows it.

The runtime (what computes logits) is an interface; `TorchRuntime` serves any transformers causal LM (with or
without a PEFT adapter)."""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """What the decoder needs from a model: logits for a prefix, for padded suffixes after it, and per step."""

    vocab_size: int

    def prefix(self, ids: list[int]) -> Any: ...

    def start(self, prefix_state: Any, suffixes: list[list[int]]) -> np.ndarray: ...

    def step(self, tokens: np.ndarray) -> np.ndarray: ...

    def keep(self, rows: np.ndarray) -> None: ...


@dataclass
class GenRequest:
    ids: list[int]
    max_tokens: int
    grammar: str | None = None
    stop: tuple[str, ...] = ()
    line_max_tokens: int | None = None


@dataclass
class GenStats:
    prompt_tokens: int = 0
    prefix_tokens_reused: int = 0
    generated_tokens: int = 0
    forced_tokens: int = 0
    seconds: float = 0.0
    by_batch: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per wall second, prefill and grammar work included."""
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence (at least one token is left to each)."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return max(n, 0)


class TorchRuntime:
    """A transformers causal LM with a DynamicCache; the prefix cache is copied and repeated per batch."""

    def __init__(self, model: Any, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = model
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._cache: Any = None
        self._mask: Any = None
        self._pos: Any = None

    def _forward(self, ids: Any, mask: Any, pos: Any, cache: Any) -> Any:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1].float()

    def prefix(self, ids: list[int]) -> Any:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if ids:
            with torch.inference_mode():
                t = torch.tensor([ids])
                self._forward(t, torch.ones_like(t), torch.arange(len(ids))[None], cache)
        return (cache, len(ids))

    def start(self, prefix_state: Any, suffixes: list[list[int]]) -> np.ndarray:
        import torch

        cache0, p = prefix_state
        bs, width = len(suffixes), max(len(s) for s in suffixes)
        cache = copy.deepcopy(cache0)
        if p:
            cache.batch_repeat_interleave(bs)
        ids = torch.zeros((bs, width), dtype=torch.long)
        mask = torch.zeros((bs, p + width), dtype=torch.long)
        mask[:, :p] = 1
        pos = torch.zeros((bs, width), dtype=torch.long)
        for r, s in enumerate(suffixes):  # padding sits between the prefix and the row's suffix
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, p + width - len(s):] = 1
            pos[r, width - len(s):] = torch.arange(p, p + len(s))
        with torch.inference_mode():
            logits = self._forward(ids, mask, pos, cache)
        self._cache, self._mask, self._pos = cache, mask, pos[:, -1:].clone()
        return logits.numpy()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        self._mask = torch.cat([self._mask, torch.ones((len(tokens), 1), dtype=torch.long)], dim=1)
        self._pos = self._pos + 1
        with torch.inference_mode():
            logits = self._forward(torch.from_numpy(tokens.astype(np.int64))[:, None], self._mask, self._pos,
                                   self._cache)
        return logits.numpy()

    def keep(self, rows: np.ndarray) -> None:
        import torch

        idx = torch.from_numpy(rows.astype(np.int64))
        self._cache.batch_select_indices(idx)
        self._mask, self._pos = self._mask[idx], self._pos[idx]


@functools.lru_cache(maxsize=4)
def _tokenizer_info(tok: Any, vocab_size: int) -> Any:
    """xgrammar's view of the vocabulary (built once per tokenizer: it walks every token)."""
    import xgrammar as xgr

    return xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab_size)


class GrammarCache:
    """Compiled grammars by EBNF text (compilation takes seconds; a run uses a handful of grammars)."""

    def __init__(self, tok: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        self.info = _tokenizer_info(tok, vocab_size)
        self.compiler = xgr.GrammarCompiler(self.info)
        self._compiled: dict[str, Any] = {}

    def get(self, ebnf: str) -> Any:
        if ebnf not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[ebnf] = self.compiler.compile_grammar(ebnf)
            log.info("compiled grammar (%d chars) in %.1fs", len(ebnf), time.perf_counter() - t0)
        return self._compiled[ebnf]


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy at temperature 0, else nucleus sampling, per row; -inf entries (masked tokens) never win."""
    if temperature <= 0:
        return logits.argmax(axis=1)
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    out = np.empty(len(p), np.int64)
    for r in range(len(p)):
        row = p[r]
        if top_p < 1.0:
            order = np.argpartition(-row, min(256, len(row) - 1))[:256]  # the nucleus lives in the top few
            order = order[np.argsort(-row[order])]
            cum = np.cumsum(row[order])
            keep = order[: int(np.searchsorted(cum, top_p * cum[-1])) + 1]
            w = row[keep] / row[keep].sum()
            out[r] = keep[rng.choice(len(keep), p=w)]
        else:
            out[r] = rng.choice(len(row), p=row)
    return out


class Decoder:
    """Runs GenRequests through a Runtime in batches that share the prompts' common prefix."""

    def __init__(self, runtime: Runtime, tokenizer: Any, *, batch_size: int = 16) -> None:
        self.rt, self.tok, self.batch_size = runtime, tokenizer, batch_size
        self.eos = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
        self.newline = tokenizer.encode("\n", add_special_tokens=False)[-1]
        self._grammars: GrammarCache | None = None
        self._prefix_key: tuple[int, ...] | None = None
        self._prefix_state: Any = None
        self.stats = GenStats()

    def grammars(self) -> GrammarCache:
        if self._grammars is None:
            self._grammars = GrammarCache(self.tok, self.rt.vocab_size)
        return self._grammars

    def _prefix(self, ids: list[int]) -> Any:
        key = tuple(ids)
        if key != self._prefix_key:  # the instruction prefix is computed once and reused across batches
            self._prefix_state, self._prefix_key = self.rt.prefix(ids), key
        return self._prefix_state

    def generate(self, reqs: Sequence[GenRequest], *, temperature: float = 0.7, top_p: float = 0.9,
                 seed: int | None = None, repetition_penalty: float = 1.0) -> list[list[int]]:
        """Token ids generated for each request (EOS excluded), in request order."""
        rng = np.random.default_rng(seed)
        out: list[list[int]] = [[] for _ in reqs]
        p = common_prefix([r.ids for r in reqs])
        order = sorted(range(len(reqs)), key=lambda i: len(reqs[i].ids))  # similar lengths pad less
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            t0 = time.perf_counter()
            gen = self._batch([reqs[i] for i in idx], p, temperature, top_p, rng, repetition_penalty)
            dt = time.perf_counter() - t0
            for i, g in zip(idx, gen, strict=True):
                out[i] = g
            n = sum(len(g) for g in gen)
            self.stats.by_batch.append({"rows": len(idx), "tokens": n, "seconds": dt})
            log.info("decoded %d/%d rows: %d tokens in %.1fs (%.1f tok/s incl. prefill)", s + len(idx),
                     len(reqs), n, dt, n / max(dt, 1e-9))
        return out

    def _batch(self, reqs: list[GenRequest], p: int, temperature: float, top_p: float,
               rng: np.random.Generator, repetition_penalty: float = 1.0) -> list[list[int]]:
        import torch
        import xgrammar as xgr

        t0 = time.perf_counter()
        state = self._prefix(reqs[0].ids[:p])
        logits = self.rt.start(state, [r.ids[p:] for r in reqs])
        self.stats.prompt_tokens += sum(len(r.ids) for r in reqs)
        self.stats.prefix_tokens_reused += p * len(reqs)
        matchers = [xgr.GrammarMatcher(self.grammars().get(r.grammar)) if r.grammar else None for r in reqs]
        vocab = self.rt.vocab_size
        bitmask = xgr.allocate_token_bitmask(len(reqs), vocab) if any(matchers) else None
        live = list(range(len(reqs)))  # request index of each runtime row
        gen: list[list[int]] = [[] for _ in reqs]
        line_len = [0] * len(reqs)
        texts = [""] * len(reqs)
        while live:
            logits = np.array(logits[:, :vocab], dtype=np.float32)
            if repetition_penalty != 1.0:
                for row, i in enumerate(live):
                    if gen[i]:
                        seen = np.unique(np.asarray(gen[i], np.int64))
                        v = logits[row, seen]
                        logits[row, seen] = np.where(v > 0, v / repetition_penalty, v * repetition_penalty)
            lg = torch.from_numpy(logits)
            forced: dict[int, int] = {}
            if bitmask is not None:
                for row, i in enumerate(live):
                    m = matchers[i]
                    if m is None:
                        continue
                    m.fill_next_token_bitmask(bitmask, row)
                    cap = reqs[i].line_max_tokens
                    if cap and line_len[i] >= cap and _allows(bitmask, row, self.newline):
                        forced[row] = self.newline  # per-line cap: end the step once the grammar lets us
                xgr.apply_token_bitmask_inplace(lg, bitmask[: len(live)].contiguous())
            toks = sample(lg.numpy(), temperature, top_p, rng)
            for row, t in forced.items():
                toks[row] = t
            finished = []
            for row, i in enumerate(live):
                t = int(toks[row])
                m = matchers[i]
                if t in self.eos and (m is None or m.is_terminated() or m.accept_token(t)):
                    finished.append(row)
                    continue
                if m is not None and not m.accept_token(t):
                    finished.append(row)  # cannot happen with the mask applied; never loop on it
                    continue
                gen[i].append(t)
                self.stats.generated_tokens += 1
                line_len[i] = 0 if t == self.newline else line_len[i] + 1
                if reqs[i].stop:
                    texts[i] += self.tok.decode([t])
                if (len(gen[i]) >= reqs[i].max_tokens or (m is not None and m.is_terminated())
                        or (reqs[i].stop and any(x in texts[i][-64:] for x in reqs[i].stop))):
                    finished.append(row)
            self.stats.forced_tokens += len(forced)
            if finished:
                keep = np.array([r for r in range(len(live)) if r not in set(finished)], np.int64)
                live = [live[r] for r in keep]
                if not live:
                    break
                self.rt.keep(keep)
                if bitmask is not None:
                    bitmask = bitmask[torch.from_numpy(keep)]
                toks = toks[keep]
            logits = self.rt.step(toks)
        self.stats.seconds += time.perf_counter() - t0
        return gen


def _allows(bitmask: Any, row: int, token: int) -> bool:
    word = int(bitmask[row, token // 32])
    return bool((word >> (token % 32)) & 1)
