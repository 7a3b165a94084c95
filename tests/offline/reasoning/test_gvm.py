"""GVM pieces on constructed cases: duplicate pruning, Recall@20 validation (real sentence encoder), mining."""

from __future__ import annotations

import numpy as np
import pytest

from offline.reasoning import grammars
from offline.reasoning.gvm import (
    cluster_facets,
    exemplars,
    load_template,
    mine,
    prune_near_duplicates,
    recall_score,
    step_name,
    step_topic,
    usable_path,
)
from scoter.io import write_json


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_prune_keeps_first_of_near_duplicates() -> None:
    a, b = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    near_a = _unit(np.array([1.0, 0.3, 0]))  # cos(a, near_a) ~ 0.96 > 0.85
    far = _unit(np.array([1.0, 1.0, 0]))  # cos ~ 0.71 to both: kept
    emb = np.stack([a, near_a, b, far, a])
    assert prune_near_duplicates(emb, 0.85) == [0, 2, 3]
    assert prune_near_duplicates(emb, 0.99) == [0, 1, 2, 3]


def test_recall_score_maps_text_to_nearest_item() -> None:
    from offline.reasoning.encode import embed

    catalogue = ["OPI red nail polish lacquer", "Ionic hair dryer 1800 watt", "Hydrating face moisturizer cream"]
    items = embed(catalogue)
    assert recall_score(["a blow dryer for hair"], 2, items, embed) == 1.0
    assert recall_score(["a blow dryer for hair"], 1, items, embed) == 0.0
    assert recall_score(["nail varnish in red", "moisturising cream for the face"], 3, items, embed) == 1.0
    assert recall_score([], 1, items, embed) == 0.0
    # only the first k recommendations count
    assert recall_score(["blow dryer", "red nail varnish"], 1, items, embed, k=1) == 0.0


def test_mine_picks_the_cluster_with_the_highest_mean_score() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:3] * 5
    emb = np.concatenate([c + rng.normal(0, 0.1, (6, 8)) for c in centers])
    scores = np.array([0, 0, 1, 0, 0, 0] + [1, 1, 1, 0, 1, 1] + [0, 1, 0, 0, 0, 0], float)
    m = mine(emb, scores, k_candidates=(2, 3, 4, 5), seed=0)
    assert m.k == 3
    best_members = np.flatnonzero(m.labels == m.best)
    assert sorted(best_members.tolist()) == list(range(6, 12))
    best = next(c for c in m.clusters if c["id"] == m.best)
    assert best["quality"] == 5 / 6 and best["size"] == 6 and best["rank"] == 1
    ex = exemplars(emb, m.labels, m.best, n=3)
    assert len(ex) == 3 and set(ex) <= set(best_members.tolist())
    centroid = emb[best_members].mean(0)
    dist = {i: np.linalg.norm(emb[i] - centroid) for i in best_members}
    assert ex[0] == min(dist, key=dist.get) or np.isclose(dist[ex[0]], min(dist.values()), atol=0.05)


def test_mine_with_too_few_paths_uses_one_cluster() -> None:
    m = mine(np.eye(3)[:2], np.array([1.0, 0.0]))
    assert m.k == 1 and m.clusters[0]["quality"] == 0.5


def test_load_template_manual_and_discovered(tmp_path) -> None:
    assert load_template("three_step")[-1] == "Item Recommendation"
    write_json(tmp_path / "template.json", {"steps": ["Look at history", "Recommend"]})
    assert load_template("discovered", tmp_path) == ["Look at history", "Recommend"]
    write_json(tmp_path / "template.json", {"steps": ["only one"]})
    import pytest

    with pytest.raises(ValueError, match="steps"):
        load_template("discovered", tmp_path)
    with pytest.raises(ValueError, match="template"):
        load_template("nine_step")


def test_cluster_facets_add_the_phrases_that_recur_in_the_cluster() -> None:
    paths = ["Review purchase history -> Spot hair serums", "Check purchase history -> Rank hair serums",
             "Purchase history of the shopper -> nothing else"]
    facets = cluster_facets(paths)
    assert facets[:len(grammars.STEP_FACETS)] == list(grammars.STEP_FACETS)
    assert "hair serums" in facets and "purchase history" in facets  # recurs in >= half the paths
    assert "the shopper" not in facets and "nothing else" not in facets  # link word / seen once


def test_best_path_step_writes_one_unused_facet_and_ends_only_where_allowed() -> None:
    from xgrammar.testing import _is_grammar_accept_string as accepts

    left = ["item tags", "brand preferences"]  # "repeat purchases" was used by an earlier step
    mid = grammars.best_path_step(left, can_end=False, must_end=False)
    assert accepts(mid, "Analyze item tags -> ") and accepts(mid, "Expand via brand preferences -> ")
    assert not accepts(mid, "Analyze repeat purchases -> ")  # a used facet cannot come back
    assert not accepts(mid, "Analyze item tags -> Item Recommendation\n")  # too short to end here
    last = grammars.best_path_step(left, can_end=True, must_end=True, verb=False)
    assert accepts(last, "item tags -> Item Recommendation\n") and not accepts(last, "item tags -> ")
    assert not accepts(last, "Analyze item tags -> Item Recommendation\n")  # the caller wrote the verb
    assert step_topic("Expand via Brand Preferences") == "brand preferences"
    with pytest.raises(ValueError, match="no facet"):
        grammars.best_path_step([], can_end=True, must_end=True)


def test_usable_path_rejects_a_template_that_repeats_its_topic() -> None:
    assert usable_path(["Analyze Interest Patterns", "Identify Repeat Purchases", "Item Recommendation"])
    assert not usable_path(["Analyze item tags", "Find item tags", "Item Recommendation"])  # one topic thrice
    assert not usable_path(["Review history", "Review history"]) and not usable_path(None)
    assert not usable_path(["ire ire ire ire ire ire", "Item Recommendation"])
    assert step_name("Expand via shared item attributes") == "Expand via Shared Item Attributes"
