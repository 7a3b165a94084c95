"""Students learn: the encoder student's loss falls on a tiny set; the LoRA student trains a few steps on
real tokens of the 135M model and then generates."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from offline.reasoning import prompts
from offline.reasoning.config import EncoderStudentConfig, LoraStudentConfig
from offline.reasoning.encode import chains_to_h, sentence_encoder
from offline.reasoning.students import EncoderStudent, LoraStudent

STEPS = ["User Interest Mining", "Item Recommendation"]
PAIRS = [
    (["OPI red nail polish", "OPI top coat"], ["loves bright nail colour", "a quick-dry nail polish"]),
    (["Hair dryer", "Argan oil shampoo"], ["cares for hair at home", "a ceramic hair straightener"]),
    (["BB cream", "Concealer"], ["builds a face makeup routine", "a setting powder"]),
    (["Lip balm", "Vitamin C serum"], ["focuses on skin care", "a hydrating face moisturizer"]),
]


def test_encoder_student_fine_tuned_on_text_reduces_its_loss() -> None:
    torch.set_num_threads(1)
    texts = [prompts.student_history_text(h) for h, _ in PAIRS]
    target, _ = chains_to_h([c for _, c in PAIRS], len(STEPS))
    cfg = EncoderStudentConfig(history_input="text", train_encoder=True, epochs=6, batch_size=4,
                               max_seq_length=32, lr=1e-4)
    student = EncoderStudent(copy.deepcopy(sentence_encoder()), len(STEPS), cfg)
    before = student.evaluate(texts, target)
    losses = student.fit(texts, target, log_every=0)
    after = student.evaluate(texts, target)
    assert after < before * 0.8, (before, after)
    assert losses[-1] < losses[0]
    h = student.predict(texts)
    assert h.shape == (4, 2, 384) and h.dtype == np.float32 and np.isfinite(h).all()


def test_item_vector_student_learns_and_predicts_all_users_from_vectors(tiny_dataset) -> None:
    from offline.reasoning.encode import history_vectors, item_embeddings

    item_emb = item_embeddings(tiny_dataset)
    histories = [s[:-2] for s in tiny_dataset.sequences[:4]]
    pooled = history_vectors(histories, item_emb, max_items=3, decay=0.5)
    assert np.allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    # the newest item weighs most: [4, 5, 10, 4] is closer to item 4 than to item 10
    assert pooled[1] @ item_emb[3] > pooled[1] @ item_emb[9]
    target, _ = chains_to_h([c for _, c in PAIRS], len(STEPS))
    student = EncoderStudent(copy.deepcopy(sentence_encoder()), len(STEPS), EncoderStudentConfig(epochs=30))
    before = student.evaluate(None, target, pooled=pooled)
    student.fit(None, target, pooled=pooled, log_every=0)
    after = student.evaluate(None, target, pooled=pooled)
    assert after < before * 0.5, (before, after)
    assert student.predict(None, pooled=pooled).shape == (4, 2, 384)


def test_student_loss_contrasts_rows_and_never_uses_a_twin_as_negative() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 2, 384, generator=g)
    cfg = EncoderStudentConfig(mse_weight=0.0, cos_weight=0.0)  # the InfoNCE alone
    assert float(EncoderStudent.loss(target.clone(), target, cfg)) < 1e-3  # each row picks out its own text
    mean = target.mean(0, keepdim=True).expand_as(target)  # regression's answer: the same for every row
    assert float(EncoderStudent.loss(mean, target, cfg)) > 1.0  # ~ log 6: it cannot tell the rows apart
    twins = target.clone()
    twins[1] = twins[0]  # two rows with the same teacher text: neither is the other's negative
    assert float(EncoderStudent.loss(twins.clone(), twins, cfg)) < 1e-3
    off = cfg.model_copy(update={"contrastive_weight": 0.0, "mse_weight": 1.0})
    assert float(EncoderStudent.loss(mean, target, off)) == pytest.approx(
        float(((mean - target) ** 2).sum(-1).mean()), rel=1e-5)


def test_lora_student_trains_and_generates() -> None:
    chats = [prompts.distill_chat(STEPS, h, max_items=4) for h, _ in PAIRS[:2]]
    answers = [prompts.format_chain(STEPS, c) for _, c in PAIRS[:2]]
    student = LoraStudent(LoraStudentConfig(steps=4, batch_size=2, lr=3e-3, max_length=96, gen_max_tokens=8))
    trainable = sum(p.numel() for p in student.model.parameters() if p.requires_grad)
    assert 0 < trainable < 2_000_000  # only the adapter trains
    losses = student.fit(chats, answers)
    assert len(losses) == 4 and losses[-1] < losses[0]
    # back on the CPU for generation (on a CPU-only machine it never left; the check bites where a GPU trains)
    assert all(p.device.type == "cpu" for p in student.model.parameters())
    if not torch.cuda.is_available():  # where a GPU is asked for and there is none, the field is named
        student.config = student.config.model_copy(update={"device": "cuda"})
        with pytest.raises(ValueError, match="LoraStudentConfig.device"):
            student.fit(chats, answers)
        student.config = student.config.model_copy(update={"device": "auto"})
    chains, report = student.write_chains(chats[:1], STEPS, mode="scaffold", step_max_tokens=4)
    assert report["users"] == 1 and report["generated_tokens"] > 0 and report["tokens_per_second"] > 0
    assert report["raw_examples"][0].startswith(f"**{STEPS[0]}:**")


def test_lora_student_writes_every_step_under_its_grammar() -> None:
    """Grammar mode: the merged student writes its training format, every step in order (nothing rejected)."""
    chats = [prompts.distill_chat(STEPS, h, max_items=4) for h, _ in PAIRS[:2]]
    answers = [prompts.format_chain(STEPS, c) for _, c in PAIRS[:2]]
    student = LoraStudent(LoraStudentConfig(steps=2, batch_size=2, max_length=96, gen_max_tokens=96))
    student.fit(chats, answers)
    chains, report = student.write_chains(chats, STEPS, step_max_tokens=12)
    assert report["mode"] == "grammar" and report["rejected"] == 0
    assert all(len(c) == len(STEPS) and all(t.strip() for t in c) for c in chains if c is not None)
    assert all(report["raw_examples"][0].split("\n")[k].startswith(f"**{s}:** ") for k, s in enumerate(STEPS))
    assert not any("lora" in n for n, _ in student.model.named_parameters())  # merged for generation
