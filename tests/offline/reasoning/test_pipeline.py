"""Distillation pipeline on constructed teacher chains: student training, H for every user and split
(aligned with Dataset.user_ids), resumability, and `scoter reason encode` from the saved student."""

from __future__ import annotations

import json

import numpy as np

from offline.reasoning import pipeline
from offline.reasoning.config import EncoderStudentConfig

STEPS = ["User Interest Mining", "Item Recommendation"]
CHAINS = {0: ["loves nail polish", "a top coat"], 1: ["face makeup routine", "a serum"],
          2: ["hair care at home", "a hair straightener"], 3: ["nail care", "a nail polish remover"],
          4: ["skin care", "a lip balm"]}


def _teacher(ds) -> dict:
    records = [{"row": u, "user": ds.user_ids[u], "history": ds.sequences[u][:-2].tolist(), "steps": c}
               for u, c in CHAINS.items()]
    records.append({"row": 5, "user": ds.user_ids[5], "history": ds.sequences[5][:-2].tolist(), "steps": None})
    return {"steps": STEPS, "records": records, "report": {"accepted": 5, "rejected": 1}}


def test_student_then_h_for_every_user_and_split(tiny_dataset, tmp_path) -> None:
    cfg = EncoderStudentConfig(epochs=5)
    student, rep = pipeline.train_encoder_student(tiny_dataset, _teacher(tiny_dataset), cfg, tmp_path)
    assert rep["train_pairs"] + rep["heldout_pairs"] == 5  # the rejected chain is not trained on
    assert rep["epoch_losses"][-1] < rep["epoch_losses"][0]
    prep = pipeline.precompute_h(student, tiny_dataset, tmp_path, cfg)
    assert prep["users"] == tiny_dataset.n_users
    h = {s: np.load(tmp_path / f"H_{s}.npy") for s in ("train", "valid", "test")}
    assert all(x.shape == (6, 2, 384) and x.dtype == np.float32 for x in h.values())
    np.testing.assert_array_equal(h["train"], h["valid"])  # same input seq[:-2]
    assert not np.allclose(h["train"], h["test"])  # test sees one more item
    assert np.load(tmp_path / "present_test.npy").all()
    assert json.loads((tmp_path / "user_ids.json").read_text()) == tiny_dataset.user_ids
    pipeline.write_meta(tmp_path, tiny_dataset, STEPS, {})
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["K"] == 2 and meta["D"] == 384 and meta["template"] == STEPS

    # resumable: existing arrays are kept, not recomputed
    mtime = (tmp_path / "H_test.npy").stat().st_mtime_ns
    assert pipeline.precompute_h(student, tiny_dataset, tmp_path, cfg)["seconds_by_split"] == {}
    assert (tmp_path / "H_test.npy").stat().st_mtime_ns == mtime

    # a row's H depends only on that row's history: recomputing a single user gives the same H
    from offline.reasoning.encode import history_vectors, item_embeddings

    v = history_vectors([tiny_dataset.sequences[2][:-1]], item_embeddings(tiny_dataset),
                        max_items=cfg.history_items, decay=cfg.recency_decay)
    np.testing.assert_allclose(student.predict(None, pooled=v)[0], h["test"][2], atol=1e-5)


def test_resumed_teacher_chains_are_resplit_with_the_current_rule(tiny_dataset, tmp_path) -> None:
    from offline.reasoning.config import DistillConfig
    from scoter.io import write_json

    good = "**User Interest Mining:** likes nails\n**Item Recommendation:** a top coat"
    junk = "**User Interest Mining:** 1.\n**Item Recommendation:** 2."
    saved = {"steps": STEPS, "report": {"accepted": 2, "rejected": 0},
             "records": [{"row": 0, "raw": good, "steps": ["stale", "stale"]},
                         {"row": 1, "raw": junk, "steps": ["1.", "2."]}]}
    write_json(tmp_path / "teacher_chains.json", saved)
    # no LLM is needed (None): the saved chains are reused, never regenerated
    out = pipeline.run_teacher(None, tiny_dataset, STEPS, DistillConfig(), tmp_path)  # type: ignore[arg-type]
    assert out["records"][0]["steps"] == ["likes nails", "a top coat"]
    assert out["records"][1]["steps"] is None
    assert out["report"]["accepted"] == 1 and out["report"]["rejected"] == 1


def test_own_chain_auc_tells_a_user_specific_h_from_a_constant_one() -> None:
    """The mean H can score a high cosine while knowing nothing about the user; the own-chain AUC puts it at
    chance (0.5), a student that recovers each user's chain near 1.0, and one that writes another user's chain
    no better than chance. Identical teacher chains (two users, one text) tie rather than count as misses."""
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(40, 3, 16))
    train = rng.normal(size=(30, 3, 16)) + teacher.mean(0)
    near = teacher + 0.3 * rng.normal(size=teacher.shape)
    assert pipeline.own_chain_auc(near, teacher).mean() > 0.95
    assert abs(pipeline.own_chain_auc(np.broadcast_to(train.mean(0), teacher.shape), teacher).mean() - 0.5) < 1e-9
    assert pipeline.own_chain_auc(np.roll(teacher, 1, axis=0), teacher).mean() < 0.6
    twins = teacher.copy()
    twins[1] = twins[0]
    auc = pipeline.own_chain_auc(twins, twins)
    assert auc[0] == auc[1] == 1 - 0.5 / 39  # each has one tie (the twin), no user above it
    fid = pipeline.fidelity(near, teacher, train)
    assert fid["heldout_own_chain_auc"] > 0.95 and fid["heldout_cosine"] > fid["heldout_cosine_mean_baseline"]
