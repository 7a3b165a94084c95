"""Teacher side of structured distillation: leave-one-out inputs (no held-out target leaks), guided
template-shaped chains from the real 135M model, rejection of chains with missing steps."""

from __future__ import annotations

import numpy as np
import pytest

from offline.reasoning import corpus
from offline.reasoning.config import DistillConfig
from offline.reasoning.distill import teacher_chains, teacher_examples
from offline.reasoning.encode import chains_to_h
from offline.reasoning.prompts import MANUAL_TEMPLATES


def test_histories_respect_leave_one_out(tiny_dataset) -> None:
    seq = tiny_dataset.sequences[1]  # [4, 5, 10, 4, 5, 9]
    assert corpus.history(seq, "train").tolist() == [4, 5, 10, 4]
    assert corpus.history(seq, "valid").tolist() == [4, 5, 10, 4]
    assert corpus.history(seq, "test").tolist() == [4, 5, 10, 4, 5]
    with pytest.raises(ValueError, match="split"):
        corpus.history(seq, "dev")  # type: ignore[arg-type]


def test_teacher_never_sees_validation_or_test_targets(tiny_dataset) -> None:
    rows = list(range(tiny_dataset.n_users))
    for ex in teacher_examples(tiny_dataset, rows, oracle=False):
        seq = tiny_dataset.sequences[ex["row"]]
        assert ex["history"] == seq[:-2].tolist() and "target" not in ex
    for ex in teacher_examples(tiny_dataset, rows, oracle=True):
        seq = tiny_dataset.sequences[ex["row"]]
        assert ex["history"] == seq[:-3].tolist() and ex["target"] == seq[-3]


def test_scaffold_teacher_writes_every_step(local_llm, tiny_dataset) -> None:
    steps = MANUAL_TEMPLATES["two_step"]
    cfg = DistillConfig(teacher_mode="scaffold", step_max_tokens=12, history_items=4, temperature=0.0)
    records, report = teacher_chains(local_llm, tiny_dataset, steps, [0, 2], cfg)
    assert report["teacher_users"] == 2 and report["accepted"] + report["rejected"] == 2
    for r in records:
        assert r["raw"].startswith(f"**{steps[0]}:**")
        if r["steps"] is not None:
            assert len(r["steps"]) == 2 and all(r["steps"])
    h, present = chains_to_h([r["steps"] for r in records], len(steps))
    assert h.shape == (2, 2, 384) and h.dtype == np.float32
    assert present.tolist() == [r["steps"] is not None for r in records]
    assert np.allclose(np.linalg.norm(h[present], axis=-1), 1.0, atol=1e-4)
    assert not h[~present].any()


def test_chains_to_h_rejects_wrong_step_count() -> None:
    with pytest.raises(ValueError, match=r"chains\[1\]: 1 steps, template has K=2"):
        chains_to_h([["a", "b"], ["a"]], 2)


def test_structured_hindsight_teacher_writes_every_step_and_stops_at_its_deadline(local_llm, tiny_dataset) -> None:
    """Grounded hindsight prompt (told seq[-3], a training interaction), one grammar-constrained generation:
    every chain has every step; with max_seconds spent after the first chunk, only that chunk is kept."""
    steps = MANUAL_TEMPLATES["two_step"]
    cfg = DistillConfig(teacher_mode="structured", oracle=True, step_chars=16, step_max_tokens=8, chunk_rows=2,
                        temperature=0.0)
    records, report = teacher_chains(local_llm, tiny_dataset, steps, [0, 2], cfg)
    # every row is generated and accounted for; greedy SmolLM2 echoes the step names at this length, which the
    # parser's copy check rejects, so acceptance itself is not asserted here
    assert report["accepted"] + report["rejected"] == 2 and report["seconds"] > 0
    assert len(records) == 2
    for r in records:
        assert r["raw"].startswith(f"**{steps[0]}:** ") and f"**{steps[1]}:** " in r["raw"]
    late = cfg.model_copy(update={"max_seconds": 1e-9})
    records, report = teacher_chains(local_llm, tiny_dataset, steps, [0, 1, 2, 3], late)
    assert report["teacher_users"] == 2 and [r["row"] for r in records] == [0, 1]
