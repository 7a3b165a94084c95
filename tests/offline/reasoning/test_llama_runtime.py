"""fastgen.LlamaRuntime against transformers' own forward (TorchRuntime): at float32 the same greedy tokens, through
continuous batching (rows leaving, rows joining, joining rows longer than the live ones); at bfloat16 well-formed
answers that mostly agree. A tiny random Llama checks the cache bookkeeping exactly and fast; the real packaged
SmolLM2-135M checks the real weights on short generations. The CUDA cases run where torch sees a GPU (the device
machine of benchmarks/gpu_reasoning.sh) and are skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline.reasoning import grammars
from offline.reasoning.config import LocalLLMConfig
from offline.reasoning.fastgen import (
    Decoder,
    GenRequest,
    LlamaRuntime,
    TorchRuntime,
    llama_supported,
    native_bf16,
    swap_remove,
)
from offline.reasoning.local_backend import gen_requests, make_runtime
from offline.reasoning.parsing import numbered_lines

SYSTEM = {"role": "system", "content": "You are a helpful beauty shop assistant. Answer briefly."}
QUESTIONS = ("Name one nail polish colour.", "Suggest a shampoo for dry hair, please.", "What is a BB cream?",
             "Which brush suits a powder foundation, and why would a beginner choose it?", "Lip balm or gloss?")


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def test_auto_dtype_takes_bfloat16_only_where_the_cpu_computes_it(tiny_llama, monkeypatch) -> None:
    """Emulated bfloat16 runs about 4x slower than float32 (AVX2 EPYC): 'auto', the default, must avoid it. This
    CPU has one answer to the capability probe; the other is faked (monkeypatched), since it cannot run here."""
    from offline.reasoning import fastgen

    assert LlamaRuntime(tiny_llama).dtype == (torch.bfloat16 if native_bf16() else torch.float32)  # the real probe
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(fastgen, "native_bf16", lambda native=native: native)
        assert LlamaRuntime(tiny_llama).dtype == want
        assert LlamaRuntime(tiny_llama, dtype="float32").dtype == torch.float32  # an explicit dtype wins
    assert LocalLLMConfig().dtype == "auto"
    with pytest.raises(ValueError, match="dtype"):
        LlamaRuntime(tiny_llama, dtype="float16")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _np(logits) -> np.ndarray:
    """A runtime's logits (a torch tensor on its device, or a numpy array) on the host."""
    return logits.cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)


def test_device_auto_takes_the_gpu_only_where_torch_sees_one(tiny_llama) -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert LocalLLMConfig().device == "auto"
    assert make_runtime(tiny_llama, LocalLLMConfig()).device.type == want
    assert make_runtime(tiny_llama, LocalLLMConfig(runtime="transformers")).device.type == want
    assert make_runtime(tiny_llama, LocalLLMConfig(device="cpu")).device.type == "cpu"
    if not torch.cuda.is_available():  # asking for a GPU that is not there is an error that says so
        with pytest.raises(ValueError, match="torch sees no GPU"):
            make_runtime(tiny_llama, LocalLLMConfig(device="cuda"))


def _steps(rt, prefix: list[int], suffixes: list[list[int]], n: int) -> list[np.ndarray]:
    """Greedy logits of n steps for each row."""
    out = [_np(rt.start(rt.prefix(prefix), suffixes))]
    for _ in range(n):
        out.append(_np(rt.step(out[-1].argmax(1))))
    return out


def test_float32_logits_match_transformers_with_and_without_a_prefix(tiny_llama) -> None:
    rng = np.random.default_rng(0)
    suffixes = [rng.integers(3, 96, k).tolist() for k in (5, 9, 2)]
    for prefix in ([], rng.integers(3, 96, 7).tolist()):
        ref = _steps(TorchRuntime(tiny_llama), prefix, suffixes, 6)
        got = _steps(LlamaRuntime(tiny_llama, dtype="float32"), prefix, suffixes, 6)
        for a, b in zip(ref, got, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_joining_and_leaving_keep_each_rows_logits(tiny_llama, device: str) -> None:
    """Rows added mid-flight (one with a suffix longer than the live rows' columns, so they shift; one shorter, so
    it is padded), rows removed in swap-remove order and in an arbitrary order: every row's logits are those of
    the row decoded alone on the CPU."""
    rng = np.random.default_rng(1)
    prefix = rng.integers(3, 96, 4).tolist()
    rows = [rng.integers(3, 96, k).tolist() for k in (3, 2, 4, 12, 6)]

    def alone(s: list[int], n: int) -> list[np.ndarray]:
        return [x[0] for x in _steps(LlamaRuntime(tiny_llama, dtype="float32"), prefix, [s], n)]

    rt = LlamaRuntime(tiny_llama, dtype="float32", grow=2, device=device)  # small chunks: caches grow often
    state = rt.prefix(prefix)
    lg = _np(rt.start(state, rows[:3]))
    live, seen = [0, 1, 2], {0: [lg[0]], 1: [lg[1]], 2: [lg[2]]}
    for t in range(7):
        if t == 2:
            lg = np.concatenate([lg, _np(rt.add(state, rows[3:]))])  # 12 tokens > the 3 + 2 columns in use
            live += [3, 4]
            seen[3], seen[4] = [lg[-2]], [lg[-1]]
            continue
        if t == 4:
            keep = swap_remove(len(live), {0})  # row 0 leaves; the last row moves into its slot
            rt.keep(keep)
            live, lg = [live[r] for r in keep], lg[keep]
        if t == 5:
            keep = np.array([2, 0, 3, 1], np.int64)  # an order that is not swap-remove: the general path
            rt.keep(keep)
            live, lg = [live[r] for r in keep], lg[keep]
        lg = _np(rt.step(lg.argmax(1)))
        for r, i in enumerate(live):
            seen[i].append(lg[r])
    for i, got in seen.items():
        want = alone(rows[i], len(got) - 1)
        tol = 1e-4 if device == "cpu" else 1e-3  # another device's kernels sum in another order
        np.testing.assert_allclose(np.stack(got), np.stack(want), atol=tol, rtol=tol)


@CUDA
def test_cuda_decoder_gives_the_cpu_greedy_answers_under_a_grammar(local_llm) -> None:
    """The real model through the decoder on the GPU (float32: masks, repetition penalty and the line cap applied
    on the device) writes the CPU's greedy answers; in bfloat16, the GPU default, the answers stay well formed."""
    model, tok = local_llm._load()
    g = grammars.numbered_steps(2, step_chars=40)
    reqs = _requests(tok, 5, 24, g)

    def run(device: str, dtype: str) -> list[list[int]]:
        rt = LlamaRuntime(model, dtype=dtype, device=device)
        return Decoder(rt, tok, batch_size=3, refill=1).generate(reqs, temperature=0.0, repetition_penalty=1.1)

    assert run("cuda", "float32") == run("cpu", "float32")
    for ids in run("cuda", "auto"):
        assert len(numbered_lines(tok.decode(ids, skip_special_tokens=True), 2)) == 2


def test_swap_remove_moves_only_rows_from_the_tail() -> None:
    assert swap_remove(6, {1, 4}).tolist() == [0, 5, 2, 3]
    assert swap_remove(4, {3}).tolist() == [0, 1, 2]
    assert swap_remove(3, {0, 1, 2}).tolist() == []


def test_unsupported_models_fall_back_to_transformers(tiny_llama) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    biased = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, attention_bias=True))
    assert "bias" in llama_supported(biased)
    with pytest.raises(ValueError, match="runtime 'llama'"):
        LlamaRuntime(biased)
    assert isinstance(make_runtime(biased, LocalLLMConfig()), TorchRuntime)
    assert isinstance(make_runtime(tiny_llama, LocalLLMConfig()), LlamaRuntime)
    assert isinstance(make_runtime(tiny_llama, LocalLLMConfig(runtime="transformers")), TorchRuntime)


def _requests(tok, n: int, max_tokens: int, grammar: str | None = None) -> list[GenRequest]:
    from offline.reasoning.config import SamplingParams

    chats = [[SYSTEM, {"role": "user", "content": q}] for q in QUESTIONS[:n]]
    return gen_requests(tok, chats, SamplingParams(max_tokens=max_tokens, grammar=grammar), 768)


def test_real_model_float32_greedy_equals_transformers_through_refills(local_llm) -> None:
    """Batch 2 over 5 prompts with refills of 1 row: rows leave at different lengths and waiting ones join."""
    model, tok = local_llm._load()
    reqs = _requests(tok, 5, 8)
    for r, m in zip(reqs, (3, 8, 5, 8, 2), strict=True):
        r.max_tokens = m
    ref = Decoder(TorchRuntime(model), tok, batch_size=5).generate(reqs, temperature=0.0)
    got = Decoder(LlamaRuntime(model, dtype="float32"), tok, batch_size=2, refill=1).generate(reqs, temperature=0.0)
    assert got == ref
    assert [len(g) for g in got] == [3, 8, 5, 8, 2]


def test_real_model_bfloat16_answers_are_well_formed_and_mostly_agree(local_llm) -> None:
    model, tok = local_llm._load()
    g = grammars.numbered_steps(2, step_chars=60)
    reqs = _requests(tok, 4, 24, grammar=g)
    for r in reqs:
        r.line_max_tokens = 10
    ref = Decoder(LlamaRuntime(model, dtype="float32"), tok, batch_size=4).generate(reqs, temperature=0.0)
    got = Decoder(LlamaRuntime(model, dtype="bfloat16"), tok, batch_size=4).generate(reqs, temperature=0.0)
    for ids in got:
        assert numbered_lines(tok.decode(ids, skip_special_tokens=True), 2) is not None, tok.decode(ids)
    agree = [np.mean([a == b for a, b in zip(x, y, strict=False)]) for x, y in zip(ref, got, strict=True)]
    assert np.mean(agree) >= 0.5, agree
    first = sum(x[:4] == y[:4] for x, y in zip(ref, got, strict=True))
    assert first >= 3, (ref, got)
