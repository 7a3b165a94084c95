"""Evaluation harness: metrics against hand-computed cases, exact top-k, subgroups, and the results JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from offline.data.datasets import LeaveOneOut, load_benchmark
from offline.data.evaluation import (
    EvalConfig,
    evaluate,
    group_items_by_popularity,
    group_users_by_length,
    rank_metrics,
    subgroup_metrics,
    topk_from_scores,
    write_result,
)


def test_rank_metrics_hand_computed() -> None:
    topk = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [3, 1, 2]])
    targets = np.array([2, 6, 10, 3])  # ranks: 1, 2, miss, 0
    m = rank_metrics(topk, targets, ks=(1, 2, 3))
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@2"] == pytest.approx(2 / 4)
    assert m["recall@3"] == pytest.approx(3 / 4)
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 4)


def test_rank_metrics_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="ks"):
        rank_metrics(np.array([[1, 2]]), np.array([1]), ks=(5,))
    with pytest.raises(ValueError, match="topk"):
        rank_metrics(np.array([[1, 2]]), np.array([1, 2]), ks=(1,))


def test_topk_excludes_padding_and_breaks_ties_by_index() -> None:
    scores = np.array([[9.0, 1.0, 5.0, 5.0, 2.0, 5.0], [0.0, 3.0, 3.0, 3.0, 3.0, 3.0]])
    items, vals = topk_from_scores(scores, 3)
    assert items.tolist() == [
        [2, 3, 5],
        [1, 2, 3],
    ]  # column 0 never returned; equal scores: lower index first
    assert vals[0].tolist() == [5.0, 5.0, 5.0]


def test_topk_exclude_history_option() -> None:
    scores = np.array([[0.0, 4.0, 3.0, 2.0, 1.0]])
    hist = np.array([[0, 1, 3]])
    assert topk_from_scores(scores, 2, hist)[0].tolist() == [[1, 2]]  # default keeps history (paper)
    assert topk_from_scores(scores, 2, hist, exclude_history=True)[0].tolist() == [[2, 4]]
    with pytest.raises(ValueError, match="k"):
        topk_from_scores(scores, 5)


def test_topk_matches_stable_full_sort() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(64, 200)), 1)  # many ties
    items, _ = topk_from_scores(scores, 10)
    masked = scores.copy()
    masked[:, 0] = -np.inf
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :10]
    assert (items == expected).all()


def test_user_groups_equal_sized_and_ordered() -> None:
    lengths = np.array([5, 50, 7, 5, 9, 12, 6, 30])
    g = group_users_by_length(lengths)
    assert np.bincount(g).tolist() == [2, 2, 2, 2]
    for a in range(3):  # every user in a lower group is no longer than any user in a higher one
        assert lengths[g == a].max() <= lengths[g == a + 1].min()


def test_item_groups_are_popularity_quartiles() -> None:
    counts = np.array([0, 10, 1, 3, 7, 2, 8, 4, 5])  # entry 0 = padding
    g = group_items_by_popularity(counts)
    assert g[0] == -1
    assert np.bincount(g[1:]).tolist() == [2, 2, 2, 2]
    assert g[2] == 0 and g[1] == 3  # least popular item in group 0, most popular in group 3


def test_subgroup_metrics_partition_the_overall() -> None:
    rng = np.random.default_rng(1)
    n, n_items = 200, 50
    targets = rng.integers(1, n_items + 1, n)
    topk = np.stack([rng.permutation(np.arange(1, n_items + 1))[:20] for _ in range(n)])
    lengths = rng.integers(3, 40, n)
    counts = np.concatenate([[0], rng.integers(0, 100, n_items)])
    overall = rank_metrics(topk, targets)
    sub = subgroup_metrics(topk, targets, lengths, counts)
    for name in ("user_length", "item_popularity"):
        groups = sub[name]
        assert sum(groups[g]["n"] for g in groups) == n
        weighted = sum(groups[g]["n"] * groups[g]["recall@10"] for g in groups if groups[g]["n"]) / n
        assert weighted == pytest.approx(overall["recall@10"])
    assert [sub["user_length"][str(g)]["n"] for g in range(4)] == [50, 50, 50, 50]


def _toy_split(tmp_path: Path) -> LeaveOneOut:
    # next item = previous + 1, so "recommend last + 1" is a perfect model
    folder = tmp_path / "succ"
    folder.mkdir()
    lines = [f"u{u} " + " ".join(str(i) for i in range(1 + u % 5, 7 + u % 5 + u % 3)) for u in range(40)]
    (folder / "sequences.txt").write_text("\n".join(lines) + "\n")
    return LeaveOneOut(load_benchmark("succ", tmp_path), max_len=4)


def test_evaluate_with_a_perfect_and_a_wrong_recommender(tmp_path: Path) -> None:
    split = _toy_split(tmp_path)
    n_items = split.dataset.n_items

    def successor(hist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nxt = hist[:, -1] + 1
        others = np.array([[i for i in range(1, n_items + 1) if i != x][: k - 1] for x in nxt])
        items = np.concatenate([nxt[:, None], others], axis=1)
        return items, np.zeros(items.shape, dtype=np.float32)

    def predecessor(hist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        items = np.repeat(hist[:, -1:], k, axis=1)
        return items, np.zeros(items.shape, dtype=np.float32)

    cfg = EvalConfig(ks=(1, 5), batch_size=7)
    good = evaluate(successor, split, "test", cfg)
    assert good["overall"]["recall@1"] == 1.0 and good["overall"]["ndcg@5"] == 1.0
    assert good["n_users"] == 40 and set(good["subgroups"]) == {"user_length", "item_popularity"}
    assert evaluate(predecessor, split, "valid", cfg, subgroups=False)["overall"]["recall@5"] == 0.0


def test_write_result_records_provenance_atomically(tmp_path: Path) -> None:
    split = _toy_split(tmp_path)
    out = tmp_path / "res" / "r.json"
    write_result(out, {"test": {"recall@10": 0.5}}, EvalConfig(), 7, split.dataset, elapsed_s=1.5, model="x")
    doc = json.loads(out.read_text())
    assert doc["seed"] == 7 and doc["model"] == "x" and doc["elapsed_s"] == 1.5
    assert doc["dataset"]["checksum"] == split.dataset.checksum and doc["dataset"]["users"] == 40
    assert doc["config"]["ks"] == [5, 10, 20]
    assert doc["git_commit"] and doc["date"] and doc["machine"]["label"]
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temp file left behind
