"""In-process transformers backend: batched generation with left padding, the model loaded once per process.

The default is the packaged SmolLM2-135M-Instruct GGUF (de-quantised to float32 by transformers), small enough
to run on a 2-core CPU; any local HF model dir (or dir + gguf file) can be configured instead."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offline.reasoning.config import LocalLLMConfig, SamplingParams
from offline.reasoning.llm import Chat, ResponseCache, cache_key, continues_assistant, validate_chats

log = logging.getLogger(__name__)
_GEN_LOCK = threading.Lock()  # one generate() at a time per process: torch on 2 cores gains nothing from more


def _dequantized_dir(model_path: str, gguf_file: str) -> Path:
    """Where the float32 copy of a GGUF model is kept: de-quantising takes 20-90 s on a busy 2-core CPU,
    loading the saved copy about a second. Keyed by the GGUF file's path, size and mtime."""
    from scoter.paths import cache_root

    st = (Path(model_path) / gguf_file).stat()
    key = hashlib.sha256(f"{Path(model_path).resolve()}/{gguf_file}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_root() / "models" / f"{Path(gguf_file).stem}-{key.hexdigest()[:16]}"


def _load_uncached(model_path: str, gguf_file: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_file:
        local = _dequantized_dir(model_path, gguf_file)
        if (local / "config.json").exists():
            return AutoModelForCausalLM.from_pretrained(local), AutoTokenizer.from_pretrained(local)
        model = AutoModelForCausalLM.from_pretrained(model_path, gguf_file=gguf_file)
        tok = AutoTokenizer.from_pretrained(model_path, gguf_file=gguf_file)
        tmp = Path(tempfile.mkdtemp(dir=local.parent.mkdir(parents=True, exist_ok=True) or local.parent))
        try:  # temp dir then rename: a killed save never leaves a half-written model behind
            model.hf_quantizer = None  # weights are already float32; the GGUF marker only blocks saving
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, local)
        except (OSError, ValueError) as exc:  # another process won the race, or the disk is read-only: keep going
            log.warning("could not cache de-quantised model at %s: %s", local, exc)
            shutil.rmtree(tmp, ignore_errors=True)
        return model, tok
    return AutoModelForCausalLM.from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path)


@functools.lru_cache(maxsize=2)
def load_causal_lm(model_path: str, gguf_file: str | None) -> tuple[Any, Any]:
    """(model, tokenizer), cached in-process: every stage reuses the same loaded model."""
    t0 = time.perf_counter()
    model, tok = _load_uncached(model_path, gguf_file)
    model.eval()
    tok.padding_side = "left"
    tok.truncation_side = "left"  # an over-long prompt loses its oldest tokens, never its end
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    log.info("loaded %s%s in %.1fs", model_path, f" ({gguf_file})" if gguf_file else "", time.perf_counter() - t0)
    return model, tok


def render_chats(tok: Any, chats: Sequence[Chat]) -> list[str]:
    """Chat template per prompt; a trailing assistant message is continued rather than closed."""
    out = []
    for chat in chats:
        if continues_assistant(chat):
            out.append(tok.apply_chat_template(chat, tokenize=False, continue_final_message=True))
        else:
            out.append(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    return out


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def gen_requests(tok: Any, chats: Sequence[Chat], params: SamplingParams, max_input_tokens: int) -> list[Any]:
    """The decoder's requests for chats: chat template, tokens left-truncated to `max_input_tokens`."""
    from offline.reasoning.fastgen import GenRequest

    texts = render_chats(tok, chats)
    ids = [tok(t, add_special_tokens=False)["input_ids"][-max_input_tokens:] for t in texts]
    return [GenRequest(ids=i, max_tokens=params.max_tokens, grammar=params.grammar, stop=params.stop,
                       line_max_tokens=params.line_max_tokens) for i in ids]


def make_runtime(model: Any, config: LocalLLMConfig) -> Any:
    """The decoder's runtime for `model` as `config.runtime` / `config.dtype` ask (see LocalLLMConfig)."""
    from offline.reasoning.fastgen import LlamaRuntime, TorchRuntime, llama_supported, resolve_device

    kind, device = config.runtime, resolve_device(config.device)
    if kind == "auto":
        why = llama_supported(model)
        kind = "transformers" if why else "llama"
        if why:
            log.info("runtime auto: transformers (%s)", why)
    if kind == "llama":
        return LlamaRuntime(model, threads=config.num_threads, dtype=config.dtype, device=device)
    return TorchRuntime(model, threads=config.num_threads, device=device)


class LocalLLM:
    """LLM backed by a transformers causal LM in this process (optionally with a PEFT adapter applied)."""

    def __init__(self, config: LocalLLMConfig | None = None, *, cache_path: Path | None = None,
                 model: Any = None, tokenizer: Any = None) -> None:
        self.config = config or LocalLLMConfig()
        self.name = self.config.name
        self._model, self._tok = model, tokenizer
        self.cache = ResponseCache(cache_path) if cache_path else None
        self.generated_tokens = 0
        self.generation_seconds = 0.0
        self._decoder: Any = None

    def decoder(self) -> Any:
        """The batched decoder (shared-prefix KV cache, grammars), built on first use."""
        if self._decoder is None:
            from offline.reasoning.fastgen import Decoder

            model, tok = self._load()
            self._decoder = Decoder(make_runtime(model, self.config), tok, batch_size=self.config.batch_size)
        return self._decoder

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch

            torch.set_num_threads(self.config.num_threads)
            self._model, self._tok = load_causal_lm(*self.config.resolved())
        return self._model, self._tok

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[str]:
        validate_chats(prompts)
        results: list[str | None] = [None] * len(prompts)
        todo: list[int] = []
        for i, chat in enumerate(prompts):
            hit = self.cache.get(cache_key(self.name, chat, params)) if self.cache is not None else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        # the decoder keeps its batch full from a longer queue (rows leave as they finish, waiting ones join);
        # groups stay bounded so answers reach the cache as they come
        bs = self.config.batch_size * (1 if self.config.engine == "hf" else 4)
        t0 = time.perf_counter()
        for start in range(0, len(todo), bs):
            idx = todo[start:start + bs]
            texts = self._generate_batch([prompts[i] for i in idx], params)
            done, elapsed = start + len(idx), time.perf_counter() - t0
            log.info("generated %d/%d prompts (%.1f tok/s, ETA %.0fs)", done, len(todo), self.tokens_per_second,
                     elapsed / done * (len(todo) - done))
            for i, text in zip(idx, texts, strict=True):
                results[i] = text
                if self.cache is not None:
                    self.cache.put(cache_key(self.name, prompts[i], params), text)
        return [r if r is not None else "" for r in results]

    def _generate_fast(self, chats: list[Chat], params: SamplingParams) -> list[str]:
        dec = self.decoder()
        tok = dec.tok
        reqs = gen_requests(tok, chats, params, self.config.max_input_tokens)
        before_tok, before_s = dec.stats.generated_tokens, dec.stats.seconds
        with _GEN_LOCK:
            out = dec.generate(reqs, temperature=params.temperature, top_p=params.top_p, seed=params.seed,
                               repetition_penalty=params.repetition_penalty)
        self.generated_tokens += dec.stats.generated_tokens - before_tok
        self.generation_seconds += dec.stats.seconds - before_s
        return [truncate_at_stop(tok.decode(g, skip_special_tokens=True), params.stop) for g in out]

    async def agenerate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[str]:
        return await asyncio.to_thread(self.generate, prompts, params)

    def _generate_batch(self, chats: list[Chat], params: SamplingParams) -> list[str]:
        if self.config.engine != "hf":
            return self._generate_fast(chats, params)
        if params.grammar:
            raise ValueError("grammar: not supported by engine 'hf' (use engine 'torch' or 'llamacpp')")
        import torch

        model, tok = self._load()
        enc = tok(render_chats(tok, chats), return_tensors="pt", padding=True, truncation=True,
                  max_length=self.config.max_input_tokens, add_special_tokens=False)
        kw: dict[str, Any] = {"max_new_tokens": params.max_tokens, "pad_token_id": tok.pad_token_id}
        if params.temperature > 0:
            kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kw.update(do_sample=False)
        if params.stop:
            kw.update(stop_strings=list(params.stop), tokenizer=tok)
        with _GEN_LOCK, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            t0 = time.perf_counter()
            out = model.generate(**enc, **kw)
            self.generation_seconds += time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        eos = {tok.eos_token_id, tok.pad_token_id}
        self.generated_tokens += int(sum(int((row != tok.pad_token_id).sum()) for row in new))
        texts = []
        for row in new:
            ids = [t for t in row.tolist() if t not in eos]
            texts.append(truncate_at_stop(tok.decode(ids, skip_special_tokens=True), params.stop))
        return texts
