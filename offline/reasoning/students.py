"""Students that write reasoning for every user.

- `EncoderStudent` (beyond the paper, after R2END): MiniLM + a per-step head maps the history text straight to
  the K step embeddings (one forward pass per user, no generation), trained with per-step cosine + MSE and an
  in-batch InfoNCE per step.
- `LoraStudent` (the paper's): LoRA fine-tuning of a small causal LM on the teacher's chains; it then writes
  chains that are split and sentence-encoded like the teacher's."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from offline.fusion.model import info_nce
from offline.reasoning import prompts
from offline.reasoning.config import EncoderStudentConfig, LocalLLMConfig, LoraStudentConfig, SamplingParams
from offline.reasoning.encode import embedding_dim
from offline.reasoning.fastgen import resolve_device
from offline.reasoning.parsing import split_chain

log = logging.getLogger(__name__)


class EncoderStudent(nn.Module):
    """history text -> H [K, D]. The head starts as K copies of the identity (every step = the history
    embedding) plus a learned per-step offset, so training begins from a sensible point."""

    def __init__(self, encoder: Any, k: int, config: EncoderStudentConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderStudentConfig()
        self.encoder = encoder
        self.encoder.max_seq_length = self.config.max_seq_length
        d = embedding_dim(encoder)
        self.k, self.d = k, d
        self.head = nn.Linear(d, k * d)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(d).repeat(k, 1))
            self.head.bias.zero_()

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        feats = self.encoder.tokenize(list(texts))
        return self.from_pooled(self.encoder(feats)["sentence_embedding"])

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The head alone, on sentence embeddings [N, D] (frozen-encoder path)."""
        return self.head(pooled).view(len(pooled), self.k, self.d)

    def _inputs(self, texts: Sequence[str]) -> Any:
        """Frozen encoder: embed once (no grad) and train/run only the head on the cached vectors."""
        if self.config.train_encoder:
            return list(texts)
        from offline.reasoning.encode import embed

        self.encoder.eval()
        return torch.from_numpy(embed(list(texts), batch_size=self.config.encode_batch_size, encoder=self.encoder))

    def _run(self, inputs: Any) -> torch.Tensor:
        return self(inputs) if isinstance(inputs, list) else self.from_pooled(inputs)

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor, config: EncoderStudentConfig) -> torch.Tensor:
        """Per-step (1 - cosine) + squared L2 distance, averaged over users and steps, plus an in-batch InfoNCE
        per step. Regression alone pulls each step to the average of what the teacher might write (its "Item
        Recommendation" then retrieves worse than the plain history vector: BENCHMARKS.md); the contrastive
        term makes a step pick out its own row's teacher text among the batch's."""
        cos = nn.functional.cosine_similarity(pred, target, dim=-1)
        total = config.cos_weight * (1 - cos).mean() + config.mse_weight * ((pred - target) ** 2).sum(-1).mean()
        if config.contrastive_weight > 0 and len(pred) > 1:
            nce = torch.stack([  # rows with the same teacher text (the same vector) are not each other's negatives
                info_nce(pred[:, k], target[:, k], config.temperature,
                         torch.unique(target[:, k], dim=0, return_inverse=True)[1])
                for k in range(pred.shape[1])]).mean()
            total = total + config.contrastive_weight * nce
        return total

    def fit(self, texts: Sequence[str] | None, targets: np.ndarray, *, pooled: np.ndarray | None = None,
            log_every: int = 10) -> list[float]:
        """Train on (history text or its precomputed vector `pooled`, teacher H [N, K, D]); returns the mean
        loss of each epoch."""
        cfg = self.config
        n = len(pooled) if pooled is not None else len(texts or [])
        if targets.shape[1:] != (self.k, self.d) or n != len(targets):
            raise ValueError(f"targets: expected shape ({n}, {self.k}, {self.d}), got {targets.shape}")
        torch.manual_seed(cfg.seed)
        rng = random.Random(cfg.seed)
        groups = [{"params": self.head.parameters(), "lr": cfg.head_lr}]
        if cfg.train_encoder:
            groups.append({"params": self.encoder.parameters(), "lr": cfg.lr})
        else:
            self.encoder.requires_grad_(False)
        opt = torch.optim.AdamW(groups, weight_decay=0.01)
        tgt = torch.from_numpy(np.asarray(targets, np.float32))
        inputs = torch.from_numpy(np.asarray(pooled, np.float32)) if pooled is not None else self._inputs(texts)
        order = list(range(n))
        history: list[float] = []
        # a small teacher set still gets >= 8 steps an epoch; a large one batches at batch_size (InfoNCE negatives)
        bs = max(1, min(cfg.batch_size, math.ceil(n / 8)))
        n_batches = math.ceil(len(order) / bs)
        t0 = time.perf_counter()
        for epoch in range(cfg.epochs):
            self.train()
            rng.shuffle(order)
            total = 0.0
            for b in range(n_batches):
                idx = order[b * bs:(b + 1) * bs]
                batch = [inputs[i] for i in idx] if isinstance(inputs, list) else inputs[idx]
                loss = self.loss(self._run(batch), tgt[idx], cfg)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                if log_every and (b + 1) % log_every == 0:
                    log.info("encoder student epoch %d batch %d/%d loss %.4f (%.1fs)", epoch + 1, b + 1,
                             n_batches, float(loss), time.perf_counter() - t0)
            history.append(total / len(order))
            log.info("encoder student epoch %d/%d mean loss %.4f", epoch + 1, cfg.epochs, history[-1])
        return history

    @torch.no_grad()
    def predict(self, texts: Sequence[str] | None, *, progress: bool = False,
                pooled: np.ndarray | None = None) -> np.ndarray:
        """H [N, K, D] float32 for every text, batched. With a frozen encoder, `pooled` (the texts' sentence
        embeddings, e.g. from `encode.pooled_cached`) skips the encoder pass."""
        from tqdm.auto import tqdm

        self.eval()
        if pooled is None and not self.config.train_encoder:
            pooled = self._inputs(texts).numpy()
        bs = self.config.encode_batch_size if pooled is None else 4096
        n = len(pooled) if pooled is not None else len(texts or [])
        out = np.zeros((n, self.k, self.d), np.float32)
        for s in tqdm(range(0, n, bs), disable=not progress, desc="encoder student", unit="batch"):
            out[s:s + bs] = (self(list(texts[s:s + bs])) if pooled is None  # type: ignore[index]
                             else self.from_pooled(torch.from_numpy(pooled[s:s + bs]))).numpy()
        return out

    def evaluate(self, texts: Sequence[str] | None, targets: np.ndarray, *, pooled: np.ndarray | None = None) -> float:
        """The training loss on (inputs, teacher H), in batches of the training batch size (the InfoNCE's
        negatives are a batch's rows, as in training)."""
        with torch.no_grad():
            self.eval()
            pred = torch.from_numpy(self.predict(texts, pooled=pooled))
            tgt = torch.from_numpy(np.asarray(targets, np.float32))
            bs = self.config.batch_size
            losses = [float(self.loss(pred[s:s + bs], tgt[s:s + bs], self.config)) * len(pred[s:s + bs])
                      for s in range(0, len(pred), bs)]
            return sum(losses) / max(len(pred), 1)


def _encode_pair(tok: Any, chat: list[dict[str, str]], answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt+answer and labels with the prompt masked (-100): the loss is on the chain only."""
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    full = prompt + answer + (tok.eos_token or "")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok(full, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(p_ids) + ids[len(p_ids):]
    if len(ids) > max_length:  # drop the oldest prompt tokens, keep the whole answer when possible
        ids, labels = ids[-max_length:], labels[-max_length:]
    return ids, labels


class LoraStudent:
    """A causal LM with a LoRA adapter, trained on (prompt, template-shaped chain) pairs."""

    def __init__(self, config: LoraStudentConfig | None = None, llm_config: LocalLLMConfig | None = None) -> None:
        from peft import LoraConfig, get_peft_model

        from offline.reasoning.local_backend import _load_uncached

        self.config = config or LoraStudentConfig()
        self.llm_config = llm_config or LocalLLMConfig()
        torch.set_num_threads(self.llm_config.num_threads)
        torch.manual_seed(self.config.seed)
        # A fresh copy: LoRA injects into the base modules, and the cached teacher must stay untouched.
        base, self.tok = _load_uncached(*self.llm_config.resolved())
        self.tok.padding_side = self.tok.truncation_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        lcfg = LoraConfig(r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
        self.model = get_peft_model(base, lcfg)
        self.train_tokens = 0
        self.train_steps = 0
        self.train_seconds = 0.0

    def fit(self, chats: Sequence[list[dict[str, str]]], answers: Sequence[str]) -> list[float]:
        """LoRA steps over shuffled pairs; returns the loss of every step. Stops at `steps` or `max_seconds`."""
        cfg = self.config
        pairs = [_encode_pair(self.tok, c, a, cfg.max_length) for c, a in zip(chats, answers, strict=True)]
        if not pairs:
            raise ValueError("LoRA student: no training pairs (every teacher chain was rejected)")
        try:
            device = torch.device(resolve_device(cfg.device))
        except ValueError as exc:
            raise ValueError(f"LoraStudentConfig.{exc}") from None
        self.model.to(device)
        # bfloat16 autocast on a GPU: the LoRA and base weights stay float32, the matmuls run at tensor-core rate
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr)
        rng = random.Random(cfg.seed)
        losses: list[float] = []
        self.model.train()
        t0 = time.perf_counter()
        order: list[int] = []
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                more = list(range(len(pairs)))
                rng.shuffle(more)
                order += more
            batch = [pairs[i] for i in order[:cfg.batch_size]]
            order = order[cfg.batch_size:]
            width = max(len(ids) for ids, _ in batch)
            pad = self.tok.pad_token_id
            ids = torch.tensor([[pad] * (width - len(i)) + i for i, _ in batch])
            lab = torch.tensor([[-100] * (width - len(b)) + b for _, b in batch])
            att = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i, _ in batch])
            with autocast:
                loss = self.model(input_ids=ids.to(device), attention_mask=att.to(device),
                                  labels=lab.to(device)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            self.train_tokens += int(att.sum())
            self.train_steps += 1
            elapsed = time.perf_counter() - t0
            if (step + 1) % 5 == 0 or step == 0:
                eta = elapsed / (step + 1) * (cfg.steps - step - 1)
                if cfg.max_seconds is not None:  # a time box ends the run first when it comes sooner
                    eta = min(eta, max(cfg.max_seconds - elapsed, 0.0))
                log.info("LoRA step %d loss %.4f (%.1fs, %.2f steps/s, ETA %.0fs)", step + 1, losses[-1], elapsed,
                         (step + 1) / elapsed, eta)
            if cfg.max_seconds is not None and elapsed > cfg.max_seconds:
                log.info("LoRA: stopping after %d steps (max_seconds=%s)", step + 1, cfg.max_seconds)
                break
        self.train_seconds += time.perf_counter() - t0
        self.model.to("cpu").eval()  # saved from the CPU; generation goes where LocalLLMConfig.device says
        return losses

    def llm(self) -> Any:
        """The fine-tuned model behind the ordinary LLM interface. Training is over by then, so the adapter is
        merged into the base weights: generation runs the plain model (and the fast decoder's llama path)."""
        from offline.reasoning.local_backend import LocalLLM

        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        self.model.eval()
        cfg = self.llm_config.model_copy(update={"batch_size": self.config.gen_batch_size,
                                                 "name": self.llm_config.name + "+lora"})
        return LocalLLM(cfg, model=self.model, tokenizer=self.tok)

    def write_chains(self, chats: Sequence[list[dict[str, str]]], steps: Sequence[str], *,
                     temperature: float = 0.0, mode: Literal["grammar", "scaffold", "free"] = "grammar",
                     step_max_tokens: int = 48) -> tuple[list[list[str] | None], dict[str, Any]]:
        """The student writes each chain: in its training format under a grammar (every step header, in order),
        with step headers prefilled round by round (`scaffold`), or freely; chains missing a step are rejected
        (None)."""
        from offline.reasoning import grammars
        from offline.reasoning.distill import STEP_STOP, scaffold_generate

        llm = self.llm()
        t0 = time.perf_counter()
        if mode == "scaffold":
            params = SamplingParams(temperature=temperature, top_p=1.0, max_tokens=step_max_tokens, stop=STEP_STOP)
            texts = scaffold_generate(llm, list(chats), steps, params)
        else:
            params = SamplingParams(temperature=temperature, top_p=1.0, max_tokens=self.config.gen_max_tokens,
                                    grammar=grammars.chain(steps) if mode == "grammar" else None,
                                    line_max_tokens=step_max_tokens if mode == "grammar" else None)
            texts = llm.generate(list(chats), params)
        chains = [split_chain(t, steps) for t in texts]
        rejected = sum(c is None for c in chains)
        return chains, {"users": len(chats), "rejected": rejected, "rejected_rate": rejected / max(len(chats), 1),
                        "generated_tokens": llm.generated_tokens, "tokens_per_second": llm.tokens_per_second,
                        "seconds": time.perf_counter() - t0, "mode": mode, "raw_examples": texts[:3]}

    def save(self, path: Path) -> None:
        from scoter.io import describe_output

        self.model.save_pretrained(str(path))
        log.info("LoRA adapter: wrote %s", describe_output(path))


def student_texts(dataset: Any, histories: Sequence[Sequence[int]], max_items: int) -> list[str]:
    return [prompts.student_history_text([dataset.item_text(int(i)) for i in h], max_items=max_items)
            for h in histories]
