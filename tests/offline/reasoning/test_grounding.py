"""Grounding facts come from training interactions only: an item that appears only as a validation or test
target is never a candidate, never counted, never in a prompt; candidates carry their catalogue ids; the
hindsight prompt shows seq[-3] (a training interaction) and nothing later."""

from __future__ import annotations

import numpy as np

from offline.data.datasets import Dataset, Item
from offline.reasoning import prompts
from offline.reasoning.config import GVMConfig
from offline.reasoning.grounding import Grounding, short_title
from offline.reasoning.gvm import recommended_items, variant_examples


def _dataset() -> Dataset:
    titles = ["Red nail polish", "Top coat", "Polish remover", "Lip balm", "Face serum", "Hair oil",
              "Secret validation item", "Secret test item"]
    items = [Item(item_id=f"X{i}", title=t, brand="Acme" if i < 4 else "brand_12", categories=["Beauty", c])
             for i, (t, c) in enumerate(zip(titles, ["Nails", "Nails", "Nails", "Lips", "Face", "Hair", "Lips",
                                                    "Face"], strict=True), 1)]
    # every user ends with ... 7 (validation target), 8 (test target): 7 and 8 occur nowhere else
    seqs = [[1, 2, 3, 4, 7, 8], [1, 2, 4, 5, 7, 8], [2, 3, 1, 6, 7, 8], [5, 6, 1, 2, 7, 8]]
    return Dataset(name="g", user_ids=[f"u{i}" for i in range(4)], sequences=[np.array(s) for s in seqs],
                   items=items, n_items=len(items), checksum="g")


def test_statistics_never_see_validation_or_test_targets() -> None:
    ds = _dataset()
    g = Grounding(ds)
    assert g.popularity[7] == 0 and g.popularity[8] == 0
    assert g.after[:, 7].sum() == 0 and g.after[:, 8].sum() == 0 and g.together[7].sum() == 0
    for seq in ds.sequences:
        cands, _ = g.candidates(seq[:-2], n=5)
        assert 7 not in cands and 8 not in cands
        assert not set(cands) & set(seq[:-2].tolist())  # the history itself is never recommended


def test_candidates_follow_co_occurrence_and_carry_catalogue_ids() -> None:
    ds = _dataset()
    g = Grounding(ds)
    cands, scores = g.candidates([1], n=3)
    assert cands[0] == 2 and scores == sorted(scores, reverse=True)  # 2 follows 1 in three training parts
    text = g.render_candidates(cands)
    assert text.splitlines()[0] == "1. (#X2) Top coat | Nails"
    assert g.render_profile([1, 2, 5]) == "categories Nails -> Face; brands Acme x2"
    assert "brand_12" not in g.item_line(5)  # placeholder brands say nothing and are left out
    assert recommended_items(["1", "3", "1"], cands, np.eye(8, dtype=np.float32), lambda t: np.zeros((len(t), 8)),
                             k=20) == [cands[0], cands[2]]


def test_no_prompt_variant_contains_a_held_out_target() -> None:
    ds = _dataset()
    for variant in prompts.VARIANTS:
        for ex in variant_examples(GVMConfig(variant=variant, candidates=4), ds, range(4)):
            text = "\n".join(m["content"] for m in ex["chat"])
            assert "Secret" not in text and ex["target"] == 7
            if variant == "hindsight":
                seq = ds.sequences[ex["row"]]
                assert "Bought next: " + Grounding(ds).item_line(int(seq[-3])) in text
            if variant == "plain":
                assert "Candidates" not in text and ex["candidates"] is None


def test_teacher_prompt_hindsight_names_the_training_target_only() -> None:
    ds = _dataset()
    g = Grounding(ds)
    seq = ds.sequences[0]
    chat = prompts.teacher_chat(["Interest", "Recommendation"], g, seq[:-3], next_item=int(seq[-3]))
    text = "\n".join(m["content"] for m in chat)
    assert "Bought next: Lip balm" in text and "Secret" not in text and "1. Interest\n2. Recommendation" in text
    assert short_title("OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce", 3) == "OPI Nail Lacquer"
