"""Batched decoding for small local models on a CPU: the prompts' shared token prefix (the instruction) is run
once and its KV cache reused by every row; each row's own suffix is then run in one padded pass, and decoding
proceeds one token per row per step until the row's grammar terminates, its token cap is hit, a stop string
appears or EOS is sampled. Finished rows leave the batch, so the cost follows the live rows; with a runtime that
can add rows (continuous batching) waiting requests take their places, so the batch stays full instead of draining.

Structure comes from xgrammar (a compiled EBNF grammar per request, applied as a token bitmask), so a 135M
model writes well-formed `<cot_path>` / `<reason>` / `<recommendations>` answers; `line_max_tokens` caps each
line (each template step or section is one line) by forcing the newline once the grammar allows it.

The runtime (what computes logits) is an interface. `LlamaRuntime` is a plain-torch forward for Llama-architecture
models (SmolLM2 is one): preallocated per-row KV caches, the shared prefix kept once and attended to by every row
in one batched matmul, fused q/k/v and gate/up projections and bfloat16 weights (AMX/AVX512-BF16 matmuls). At
float32 it gives transformers' greedy tokens. `TorchRuntime` serves any transformers causal LM (with or without a
PEFT adapter) through transformers' own forward and a DynamicCache. benchmarks/teacher_throughput.py measures
them side by side on the distillation teacher's requests."""

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
    """What the decoder needs from a model: logits for a prefix, for padded suffixes after it, and per step.
    Logits are float32 [rows, vocab], a numpy array or a torch tensor on the model's device (the decoder masks and
    picks the nucleus there, so only [rows, 256] values cross to the host per step)."""

    vocab_size: int

    def prefix(self, ids: list[int]) -> Any: ...

    def start(self, prefix_state: Any, suffixes: list[list[int]]) -> Any: ...

    def step(self, tokens: np.ndarray) -> Any: ...

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
    """A transformers causal LM with a DynamicCache; the prefix cache is copied and repeated per batch. The model
    is moved to `device` (not copied)."""

    def __init__(self, model: Any, threads: int = 1, device: str = "cpu") -> None:
        import torch

        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        head = model.get_output_embeddings()  # a dynamically quantised head has out_features, no weight tensor
        self.vocab_size = int(getattr(head, "out_features", None) or head.weight.shape[0])
        self._cache: Any = None
        self._mask: Any = None
        self._pos: Any = None

    def _forward(self, ids: Any, mask: Any, pos: Any, cache: Any) -> Any:
        d = self.device
        out = self.model(input_ids=ids.to(d), attention_mask=mask.to(d), position_ids=pos.to(d), cache=cache,
                         use_cache=True, logits_to_keep=1)
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
        return logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        self._mask = torch.cat([self._mask, torch.ones((len(tokens), 1), dtype=torch.long)], dim=1)
        self._pos = self._pos + 1
        with torch.inference_mode():
            return self._forward(torch.as_tensor(tokens, dtype=torch.long)[:, None], self._mask, self._pos,
                                 self._cache)

    def keep(self, rows: np.ndarray) -> None:
        import torch

        idx = torch.from_numpy(rows.astype(np.int64))
        self._cache.batch_select_indices(idx.to(self.device))
        self._mask, self._pos = self._mask[idx], self._pos[idx]


def llama_supported(model: Any) -> str | None:
    """None when `LlamaRuntime` can run `model`, else why not (a PEFT wrapper or adapter layers, biases, another
    architecture or RoPE scaling)."""
    import torch

    cfg = getattr(model, "config", None)
    if type(model).__name__ != "LlamaForCausalLM" or cfg is None:
        return f"{type(model).__name__} is not a plain LlamaForCausalLM"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "attention or MLP biases"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope_type {rope.get('rope_type')!r}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for layer in model.model.layers:
        mods = [getattr(layer.self_attn, n, None) for n in names[:4]] + [getattr(layer.mlp, n, None) for n in names[4:]]
        if any(type(m) is not torch.nn.Linear for m in mods):
            return "projections are not plain Linear layers (an adapter or quantisation is applied)"
    if type(model.lm_head) is not torch.nn.Linear:
        return "lm_head is not a plain Linear layer"
    return None


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 matmuls (AVX512-BF16 / AMX), as oneDNN reports it. Without them torch
    emulates bfloat16 and the runtime runs about 4x slower than in float32 (AVX2 EPYC, BENCHMARKS.md)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """'auto' -> bfloat16 on a GPU and where the CPU computes it natively, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") or native_bf16() else "float32"


def resolve_device(device: str) -> str:
    """'auto' -> cuda when torch sees a GPU, else cpu; 'cuda' without one is an error that says so."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for, but torch sees no GPU (use auto or cpu)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class LlamaRuntime:
    """Llama-architecture causal LM in plain torch, laid out for batched CPU decoding.

    * The prefix's keys/values are kept once ([kv_heads, ...], not per row); a decode step attends to them with one
      matmul over all rows' queries (so reading them costs once per step, not once per row), and to each row's own
      keys (its suffix and generated tokens, preallocated and grown in chunks, never concatenated per step) with a
      batched matmul; the two score blocks share one softmax.
    * q/k/v and gate/up are one matmul each; q/k rows are stored in interleaved-pair order so RoPE is a complex
      multiply (q.k is unchanged: both get the same permutation).
    * Weights in `dtype` (bfloat16 halves the bytes read per step and uses AMX/AVX512-BF16; 'auto' takes it only
      where the CPU has them, since emulated bfloat16 is slower than float32); the residual stream, norms, RoPE,
      decode attention and the KV cache stay float32 (the prefill's attention runs in `dtype`).
    * `add` appends rows mid-flight and `keep` moves finishing rows' slots in place, so the decoder can keep the
      batch full.
    * On a GPU (`device`) every tensor lives there and only the last position's logits come back to the host,
      where the grammar masks and sampling run.

    The weights are copied when the runtime is built: a model trained afterwards needs a new runtime.
    """

    def __init__(self, model: Any, threads: int = 1, dtype: str = "auto", grow: int = 64,
                 device: str = "cpu") -> None:
        import torch

        why = llama_supported(model)
        if why:
            raise ValueError(f"runtime 'llama': cannot run this model ({why}); use runtime 'transformers'")
        if dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype: expected auto, float32 or bfloat16, got {dtype!r}")
        dtype = resolve_dtype(dtype, device)
        torch.set_num_threads(threads)
        self.device = dev = torch.device(device)
        cfg = model.config
        self.dtype = getattr(torch, dtype)
        self.hd = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.nh, self.nkv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
        self.eps = float(cfg.rms_norm_eps)
        self.grow = grow
        self.inv_freq = model.model.rotary_emb.inv_freq.to(dev, torch.float32, copy=True)
        dt = self.dtype
        f32 = lambda w: w.to(dev, torch.float32, copy=True)  # noqa: E731
        low = lambda w: w.to(dev, dt, copy=True).contiguous()  # noqa: E731
        with torch.no_grad():
            self.layers = []
            for layer in model.model.layers:
                a, m = layer.self_attn, layer.mlp
                wqkv = torch.cat([self._interleave(a.q_proj.weight, self.nh),
                                  self._interleave(a.k_proj.weight, self.nkv), a.v_proj.weight])
                self.layers.append((f32(layer.input_layernorm.weight), low(wqkv), low(a.o_proj.weight),
                                    f32(layer.post_attention_layernorm.weight),
                                    low(torch.cat([m.gate_proj.weight, m.up_proj.weight])), low(m.down_proj.weight)))
            self.embed = f32(model.model.embed_tokens.weight)
            self.norm = f32(model.model.norm.weight)
            self.head = low(model.lm_head.weight)
        self.vocab_size = int(self.head.shape[0])
        self._kt: list[Any] = []
        self._v: list[Any] = []

    def _interleave(self, w: Any, heads: int) -> Any:
        """Rows of each head reordered (0, d/2, 1, d/2+1, ...): rotate-half RoPE becomes pairwise."""
        import torch

        hd = self.hd
        perm = torch.stack([torch.arange(hd // 2), torch.arange(hd // 2, hd)], 1).reshape(-1)
        return w.view(heads, hd, -1)[:, perm].reshape(heads * hd, -1)

    def _rope(self, pos: Any) -> Any:
        import torch

        freqs = pos[..., None].float() * self.inv_freq
        return torch.polar(torch.ones_like(freqs), freqs)[:, :, None]  # [b, T, 1, hd/2]

    @staticmethod
    def _rotate(x: Any, cis: Any) -> Any:
        import torch

        return torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * cis).flatten(-2)

    def _layers(self, ids: Any, pos: Any, attend: Any) -> Any:
        """Hidden states after the last layer; `attend(layer, q, k, v)` ([b, heads, T, hd] each) returns the
        attention output [b, T, heads*hd] and keeps k/v where it needs them."""
        import torch.nn.functional as F

        b, T = ids.shape
        nh, nkv, hd, dt = self.nh, self.nkv, self.hd, self.dtype
        x = F.embedding(ids, self.embed)
        cis = self._rope(pos)
        for li, (w1, wqkv, wo, w2, wgu, wd) in enumerate(self.layers):
            h = F.rms_norm(x, (x.shape[-1],), w1, self.eps)
            qkv = F.linear(h.to(dt), wqkv).float()
            qk = self._rotate(qkv[..., :(nh + nkv) * hd].reshape(b, T, nh + nkv, hd), cis)
            v = qkv[..., (nh + nkv) * hd:].reshape(b, T, nkv, hd).transpose(1, 2)
            o = attend(li, qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), v)
            x = x + F.linear(o.to(dt), wo).float()
            h = F.rms_norm(x, (x.shape[-1],), w2, self.eps)
            g, u = F.linear(h.to(dt), wgu).split(wd.shape[1], dim=-1)
            x = x + F.linear(F.silu(g) * u, wd).float()
        return x

    def _logits(self, x: Any) -> Any:
        import torch.nn.functional as F

        h = F.rms_norm(x[:, -1], (x.shape[-1],), self.norm, self.eps)
        return F.linear(h.to(self.dtype), self.head).float()

    def prefix(self, ids: list[int]) -> Any:
        import torch
        import torch.nn.functional as F

        p = len(ids)
        kts: list[Any] = []
        vs: list[Any] = []
        if p:
            causal = torch.ones(p, p, dtype=torch.bool, device=self.device).tril()[None, None]

            def attend(li: int, q: Any, k: Any, v: Any) -> Any:
                kts.append(k[0].transpose(1, 2).contiguous())  # [kv_heads, hd, p]
                vs.append(v[0].contiguous())  # [kv_heads, p, hd]
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, enable_gqa=True)
                return o.transpose(1, 2).reshape(1, p, -1)

            with torch.inference_mode():
                self._layers(torch.tensor([ids], device=self.device), torch.arange(p, device=self.device)[None],
                             attend)
        return (kts, vs, p)

    def _block(self, prefix_state: Any, suffixes: list[list[int]], kts: list[Any], vs: list[Any],
               c0: int) -> tuple[Any, Any, Any]:
        """Runs the rows' suffixes (left-padded to one width w) after the prefix, writing their keys/values to
        columns [c0, c0 + w) of `kts` / `vs`; returns (last-position logits, valid [rows, w], last positions)."""
        import torch
        import torch.nn.functional as F

        pk, pv, p = prefix_state
        b, w = len(suffixes), max(len(s) for s in suffixes)
        ids = torch.zeros((b, w), dtype=torch.long)
        pos = torch.zeros((b, w), dtype=torch.long)
        valid = torch.zeros((b, w), dtype=torch.bool)  # which columns hold a real token (left padding)
        for r, s in enumerate(suffixes):
            ids[r, w - len(s):] = torch.tensor(s)
            valid[r, w - len(s):] = True
            pos[r, w - len(s):] = torch.arange(p, p + len(s))
        t = torch.arange(w)
        own = valid[:, None, :] & (t[None, :] <= t[:, None])[None]
        own |= torch.eye(w, dtype=torch.bool)[None]  # a padding query sees itself: no all-masked row, no NaN
        mask = torch.cat([torch.ones((b, w, p), dtype=torch.bool), own], 2)[:, None].to(self.device)
        ids, pos, valid = ids.to(self.device), pos.to(self.device), valid.to(self.device)

        def attend(li: int, q: Any, k: Any, v: Any) -> Any:
            kts[li][..., c0:c0 + w] = k.transpose(2, 3)
            vs[li][:, :, c0:c0 + w] = v
            if p:
                k = torch.cat([pk[li].transpose(1, 2).expand(b, -1, -1, -1), k], 2)
                v = torch.cat([pv[li].expand(b, -1, -1, -1), v], 2)
            d = self.dtype  # bfloat16 attention here halves the prefill's attention time (measured)
            o = F.scaled_dot_product_attention(q.to(d), k.to(d), v.to(d), attn_mask=mask, enable_gqa=True)
            return o.transpose(1, 2).reshape(b, w, -1)

        with torch.inference_mode():
            logits = self._logits(self._layers(ids, pos, attend))
        return logits, valid, pos[:, -1:].clone()

    def _alloc(self, rows: int, cols: int) -> tuple[list[Any], list[Any]]:
        import torch

        d = self.device
        return ([torch.zeros((rows, self.nkv, self.hd, cols), device=d) for _ in self.layers],
                [torch.zeros((rows, self.nkv, cols, self.hd), device=d) for _ in self.layers])

    def start(self, prefix_state: Any, suffixes: list[list[int]]) -> Any:
        import torch

        w = max(len(s) for s in suffixes)
        self._kt, self._v = self._alloc(len(suffixes), w + self.grow)
        logits, valid, self._pos = self._block(prefix_state, suffixes, self._kt, self._v, 0)
        self._valid = torch.cat([valid, valid.new_zeros((len(suffixes), self.grow))], 1)
        self._prefix_state, self._n = prefix_state, w
        return logits

    def add(self, prefix_state: Any, suffixes: list[list[int]]) -> Any:
        """New rows appended after the live ones (continuous batching): their suffixes end at the current
        column, so every row's next token goes to the same column."""
        import torch

        if prefix_state is not self._prefix_state:
            raise ValueError("add: rows must share the prefix the batch was started with")
        w = max(len(s) for s in suffixes)
        if w > self._n:  # shift the live rows right so the new suffixes fit before the current column
            d = w - self._n
            self._kt = [torch.cat([t.new_zeros((*t.shape[:3], d)), t], 3) for t in self._kt]
            self._v = [torch.cat([t.new_zeros((t.shape[0], t.shape[1], d, t.shape[3])), t], 2) for t in self._v]
            self._valid = torch.cat([self._valid.new_zeros((len(self._valid), d)), self._valid], 1)
            self._n = w
        cols = self._v[0].shape[2]
        kt, v = self._alloc(len(suffixes), cols)
        logits, valid, pos = self._block(prefix_state, suffixes, kt, v, self._n - w)
        full = torch.zeros((len(suffixes), cols), dtype=torch.bool, device=self.device)
        full[:, self._n - w:self._n] = valid
        self._kt = [torch.cat([a, b]) for a, b in zip(self._kt, kt, strict=True)]
        self._v = [torch.cat([a, b]) for a, b in zip(self._v, v, strict=True)]
        self._valid = torch.cat([self._valid, full])
        self._pos = torch.cat([self._pos, pos])
        return logits

    def step(self, tokens: Any) -> Any:
        import torch

        b = len(tokens)
        if self._n >= self._v[0].shape[2]:  # grow the own caches by a chunk (amortised, not per step)
            g = self.grow
            self._kt = [torch.cat([t, t.new_zeros((*t.shape[:3], g))], 3) for t in self._kt]
            self._v = [torch.cat([t, t.new_zeros((t.shape[0], t.shape[1], g, t.shape[3]))], 2) for t in self._v]
            self._valid = torch.cat([self._valid, self._valid.new_zeros((b, g))], 1)
        n, nkv, hd = self._n, self.nkv, self.hd
        pk, pv, p = self._prefix_state
        rep = self.nh // nkv
        self._valid[:, n] = True
        self._pos = self._pos + 1
        bias = torch.zeros((b, n + 1), device=self.device).masked_fill_(~self._valid[:, :n + 1], float("-inf"))[:, None, None]
        scale = hd ** -0.5

        def attend(li: int, q: Any, k: Any, v: Any) -> Any:
            kt, vv = self._kt[li], self._v[li]
            kt[..., n] = k[:, :, 0]
            vv[:, :, n] = v[:, :, 0]
            qg = q.reshape(b, nkv, rep, hd) * scale  # query heads j*rep .. j*rep+rep-1 share kv head j
            s_own = torch.matmul(qg, kt[..., :n + 1]) + bias
            if not p:
                return torch.matmul(s_own.softmax(-1), vv[:, :, :n + 1]).reshape(b, 1, -1)
            s_pre = torch.bmm(qg.transpose(0, 1).reshape(nkv, b * rep, hd), pk[li])
            att = torch.cat([s_pre.view(nkv, b, rep, p).transpose(0, 1), s_own], -1).softmax(-1)
            o = torch.matmul(att[..., p:], vv[:, :, :n + 1])
            o_pre = torch.bmm(att[..., :p].transpose(0, 1).reshape(nkv, b * rep, p), pv[li])
            return (o + o_pre.view(nkv, b, rep, hd).transpose(0, 1)).reshape(b, 1, -1)

        with torch.inference_mode():
            x = self._layers(torch.as_tensor(tokens, dtype=torch.long).to(self.device)[:, None], self._pos, attend)
            logits = self._logits(x)
        self._n = n + 1
        return logits

    def keep(self, rows: np.ndarray) -> None:
        """Row j becomes old row rows[j]. When every moved row comes from the dropped tail (the decoder's
        swap-remove order) the moves are copied in place and the tail cut off, so a finishing row costs one row's
        copy, not the whole cache's."""
        import torch

        k = len(rows)
        moves = [(j, int(r)) for j, r in enumerate(rows) if r != j]
        if all(r >= k for _, r in moves):
            for j, r in moves:
                for t in (*self._kt, *self._v):
                    t[j] = t[r]
                self._valid[j] = self._valid[r]
                self._pos[j] = self._pos[r]
            self._kt = [t[:k] for t in self._kt]
            self._v = [t[:k] for t in self._v]
            self._valid, self._pos = self._valid[:k], self._pos[:k]
        else:
            idx = torch.from_numpy(rows.astype(np.int64)).to(self.device)
            self._kt = [t.index_select(0, idx) for t in self._kt]
            self._v = [t.index_select(0, idx) for t in self._v]
            self._valid, self._pos = self._valid[idx], self._pos[idx]
        first = int(self._valid[:, :self._n].any(0).int().argmax()) if k else 0
        if first >= self.grow:  # drop leading columns no live row uses any more (after refills)
            self._kt = [t[..., first:].contiguous() for t in self._kt]
            self._v = [t[:, :, first:].contiguous() for t in self._v]
            self._valid, self._n = self._valid[:, first:].contiguous(), self._n - first


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


def as_tensor(logits: Any) -> Any:
    """A runtime's logits as a float32 torch tensor (a numpy array is wrapped, not copied)."""
    import torch

    if isinstance(logits, torch.Tensor):
        return logits.float()
    return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))


def sample(logits: Any, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Next token per row: greedy at temperature 0, else nucleus sampling; -inf entries (masked tokens) never
    win. `logits` is a torch tensor on any device: the nucleus is taken inside each row's 256 most likely tokens
    there, and only those cross to the host, where every row is drawn at once by inverting its distribution."""
    import torch

    if temperature <= 0:
        return logits.argmax(dim=1).cpu().numpy()
    if top_p < 1.0:
        top, order = torch.topk(logits, min(256, logits.shape[1]), dim=1)  # sorted, most likely first
        z, order = top.cpu().numpy() / temperature, order.cpu().numpy()
    else:
        z, order = logits.cpu().numpy() / temperature, None
    cum = np.cumsum(np.exp(z - z.max(axis=1, keepdims=True)), axis=1)
    if top_p < 1.0:  # the smallest sorted head whose mass reaches top_p, the token that crosses it included
        cut = (cum < top_p * cum[:, -1:]).sum(axis=1, keepdims=True)
        cum = np.minimum(cum, np.take_along_axis(cum, cut, axis=1))
    pick = np.minimum((cum <= rng.random((len(cum), 1)) * cum[:, -1:]).sum(axis=1), cum.shape[1] - 1)
    return pick if order is None else order[np.arange(len(pick)), pick]


class Decoder:
    """Runs GenRequests through a Runtime, all rows sharing the prompts' common prefix.

    With a runtime that can `add` rows (LlamaRuntime) decoding is continuous: rows that finish leave the batch and
    waiting requests join it (in chunks of at least `refill` rows, prefilled together) so the batch stays full;
    otherwise requests run in consecutive batches of `batch_size` that drain as their rows finish."""

    def __init__(self, runtime: Runtime, tokenizer: Any, *, batch_size: int = 16, refill: int | None = None) -> None:
        self.rt, self.tok, self.batch_size = runtime, tokenizer, batch_size
        self.refill = max(1, refill if refill is not None else batch_size // 4)
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
        import torch
        import xgrammar as xgr

        rng = np.random.default_rng(seed)
        gen: list[list[int]] = [[] for _ in reqs]
        if not reqs:
            return gen
        t0 = time.perf_counter()
        p = common_prefix([r.ids for r in reqs])
        continuous = hasattr(self.rt, "add")
        # similar lengths pad less; continuous: longest first, so a joining row's suffix fits before the column
        queue = sorted(range(len(reqs)), key=lambda i: len(reqs[i].ids), reverse=continuous)
        matchers: list[Any] = [None] * len(reqs)
        line_len = [0] * len(reqs)
        texts = [""] * len(reqs)
        vocab = self.rt.vocab_size
        any_grammar = any(r.grammar for r in reqs)
        bitmask = xgr.allocate_token_bitmask(self.batch_size, vocab) if any_grammar else None
        live: list[int] = []  # request index of each runtime row
        logits: Any = None
        done, gen0 = 0, self.stats.generated_tokens
        while True:
            free = self.batch_size - len(live)
            if queue and (not live or (continuous and free >= min(self.refill, len(queue)))):
                idx, queue = queue[:free], queue[free:]
                state = self._prefix(reqs[idx[0]].ids[:p])
                suffixes = [reqs[i].ids[p:] for i in idx]
                if live:
                    logits = torch.cat([logits, as_tensor(self.rt.add(state, suffixes))])
                else:
                    logits = as_tensor(self.rt.start(state, suffixes))
                for i in idx:
                    if reqs[i].grammar:
                        matchers[i] = xgr.GrammarMatcher(self.grammars().get(reqs[i].grammar))
                live += idx
                self.stats.prompt_tokens += sum(len(reqs[i].ids) for i in idx)
                self.stats.prefix_tokens_reused += p * len(idx)
                self.stats.by_batch.append({"rows": len(idx), "live": len(live),
                                            "seconds": time.perf_counter() - t0})
            if not live:
                break
            assert logits is not None
            with torch.inference_mode():
                toks, forced = self._choose(logits, live, reqs, gen, matchers, line_len, bitmask, temperature,
                                            top_p, rng, repetition_penalty)
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
            self.stats.forced_tokens += forced
            if finished:
                gone = set(finished)
                done += len(gone)
                keep = swap_remove(len(live), gone)
                live = [live[r] for r in keep]
                if done // self.batch_size > (done - len(gone)) // self.batch_size or done == len(reqs):
                    el, n = time.perf_counter() - t0, self.stats.generated_tokens - gen0
                    log.info("decoded %d/%d rows: %d tokens in %.1fs (%.1f tok/s incl. prefill)", done, len(reqs), n,
                             el, n / max(el, 1e-9))
                if not live:
                    continue
                self.rt.keep(keep)
                toks = toks[keep]
            logits = as_tensor(self.rt.step(toks))
        self.stats.seconds += time.perf_counter() - t0
        return gen

    def _choose(self, logits: Any, live: list[int], reqs: Sequence[GenRequest], gen: list[list[int]],
                matchers: list[Any], line_len: list[int], bitmask: Any, temperature: float, top_p: float,
                rng: np.random.Generator, repetition_penalty: float) -> tuple[np.ndarray, int]:
        """Next token per live row: repetition penalty, grammar mask, per-line cap, then sampling. The logits stay
        where the runtime made them and are changed in place (the caller holds inference mode: they are inference
        tensors); the masks are built on the host and applied there in one call each."""
        import torch
        import xgrammar as xgr

        lg = logits[:, :self.rt.vocab_size]
        if repetition_penalty != 1.0:
            seen = [np.unique(np.asarray(gen[i], np.int64)) for i in live]
            rows = np.repeat(np.arange(len(live)), [len(x) for x in seen])
            if len(rows):
                r = torch.from_numpy(rows).to(lg.device)
                c = torch.from_numpy(np.concatenate(seen)).to(lg.device)
                v = lg[r, c]
                lg[r, c] = torch.where(v > 0, v / repetition_penalty, v * repetition_penalty)
        forced: dict[int, int] = {}
        if bitmask is not None:
            for row, i in enumerate(live):
                m = matchers[i]
                if m is None:
                    bitmask[row] = -1  # no grammar: every token allowed
                    continue
                m.fill_next_token_bitmask(bitmask, row)
                cap = reqs[i].line_max_tokens
                if cap and line_len[i] >= cap and _allows(bitmask, row, self.newline):
                    forced[row] = self.newline  # per-line cap: end the step once the grammar lets us
            xgr.apply_token_bitmask_inplace(lg, bitmask[: len(live)].to(lg.device),
                                            backend="cpu" if lg.device.type == "cpu" else "torch_native")
        toks = sample(lg, temperature, top_p, rng)
        for row, t in forced.items():
            toks[row] = t
        return toks, len(forced)


def swap_remove(n: int, gone: set[int]) -> np.ndarray:
    """The surviving rows of 0..n-1 as a `keep` order in which rows in front stay where they are and the
    survivors behind fill the gaps: only len(gap) rows move."""
    k = n - len(gone)
    tail = [r for r in range(k, n) if r not in gone]
    order = list(range(k))
    for j in range(k):
        if j in gone:
            order[j] = tail.pop()
    return np.array(order, np.int64)


def _allows(bitmask: Any, row: int, token: int) -> bool:
    word = int(bitmask[row, token // 32])
    return bool((word >> (token % 32)) & 1)
