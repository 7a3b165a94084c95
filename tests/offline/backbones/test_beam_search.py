"""The trie-constrained beam search: exact against exhaustive scoring when the beam covers the catalogue,
only real items, deterministic order, padding when there are fewer items than beams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline.backbones import (
    HstuConfig,
    HstuModel,
    RankingModule,
    TigerConfig,
    TigerModel,
    TrieTensors,
    constrained_beam_search,
)

torch.set_num_threads(1)


def random_codes(rng: np.random.Generator, sizes: list[int], n_items: int) -> np.ndarray:
    """[n_items + 1, L] unique code tuples (row 0 = padding)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    body = grid[rng.choice(len(grid), size=n_items, replace=False)]
    return np.vstack([np.zeros((1, len(sizes)), dtype=np.int64), body]).astype(np.int64)


def make_model(kind: str, codes: np.ndarray, sizes: list[int], seed: int = 0):
    torch.manual_seed(seed)
    if kind == "tiger":
        return TigerModel(TigerConfig.small(), codes, sizes).eval()
    if kind == "hstu-item":  # random biases so the leaf and the prefix heads disagree and the prior matters
        model = HstuModel(HstuConfig.small(head="item", prior_weight=1.0), codes, sizes).eval()
        with torch.no_grad():
            model.head.item_bias.normal_(0.0, 2.0)
            model.head.prefix_bias[0].normal_(0.0, 2.0)
        return model
    return HstuModel(HstuConfig.small(), codes, sizes).eval()


def exhaustive_ranking(model, history: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Score every item's full tuple by teacher forcing; order by (score desc, item asc)."""
    n = model.n_items
    items = torch.arange(1, n + 1).repeat(history.shape[0], 1)
    with torch.no_grad():
        scores = model.sequence_log_prob(history, items).numpy()
    order = np.stack([np.lexsort((np.arange(1, n + 1), -row)) for row in scores])
    return np.take_along_axis(items.numpy(), order, 1), np.take_along_axis(scores, order, 1)


@pytest.mark.parametrize("kind", ["tiger", "hstu", "hstu-item"])
def test_full_beam_equals_exhaustive_scoring(kind: str) -> None:
    rng = np.random.default_rng(1)
    sizes = [5, 4, 3]
    codes = random_codes(rng, sizes, 23)
    model = make_model(kind, codes, sizes)
    trie = TrieTensors.for_model(model)
    history = torch.as_tensor(rng.integers(0, 24, size=(4, 6)))
    with torch.no_grad():
        items, scores = constrained_beam_search(model, history, trie, beam=30, exclude_history=False)
    ref_items, ref_scores = exhaustive_ranking(model, history)
    np.testing.assert_array_equal(items[:, :23].numpy(), ref_items)
    np.testing.assert_allclose(scores[:, :23].numpy(), ref_scores, rtol=1e-5, atol=1e-5)
    # beam 30 > 23 items: the rest is padding
    assert (items[:, 23:] == 0).all() and torch.isinf(scores[:, 23:]).all()


@pytest.mark.parametrize("kind", ["tiger", "hstu", "hstu-item"])
def test_excluding_history_is_the_exhaustive_ranking_without_the_history_items(kind: str) -> None:
    """The default: no item of the given history is returned, and the rest keep their exhaustive order and
    scores (the item head masks them before the beam; the code decoder drops them after)."""
    rng = np.random.default_rng(2)
    sizes = [5, 4, 3]
    codes = random_codes(rng, sizes, 23)
    model = make_model(kind, codes, sizes)
    history = torch.as_tensor(rng.integers(0, 24, size=(4, 6)))
    with torch.no_grad():
        items, scores = constrained_beam_search(model, history, TrieTensors.for_model(model), beam=30)
    ref_items, ref_scores = exhaustive_ranking(model, history)
    for row in range(history.shape[0]):
        seen = set(history[row].tolist()) - {0}
        keep = [j for j, i in enumerate(ref_items[row]) if i not in seen]
        n = len(keep)
        assert not seen & set(items[row].tolist())
        np.testing.assert_array_equal(items[row, :n].numpy(), ref_items[row, keep])
        if kind != "hstu-item":  # the item head renormalises nothing: masked mass leaves the others' scores as is
            np.testing.assert_allclose(scores[row, :n].numpy(), ref_scores[row, keep], rtol=1e-5, atol=1e-5)
        assert (items[row, n:] == 0).all() and torch.isinf(scores[row, n:]).all()


@pytest.mark.parametrize("kind", ["tiger", "hstu", "hstu-item"])
def test_small_beam_returns_distinct_real_items_best_first(kind: str) -> None:
    rng = np.random.default_rng(2)
    sizes = [8, 8, 2]
    codes = random_codes(rng, sizes, 60)
    model = make_model(kind, codes, sizes)
    trie = TrieTensors.for_model(model)
    history = torch.as_tensor(rng.integers(1, 61, size=(5, 8)))
    with torch.no_grad():
        items, scores = constrained_beam_search(model, history, trie, beam=6, topk=4)
        rescored = model.sequence_log_prob(history, items)
    assert items.shape == (5, 4) and scores.dtype == torch.float32
    assert ((items >= 1) & (items <= 60)).all()
    assert all(len(set(row.tolist())) == 4 for row in items)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    torch.testing.assert_close(scores, rescored, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beam", [6, 12])  # first level (8 codes) >= beam: one row per user first; < beam: all
def test_unconstrained_search_has_the_same_shapes_and_equals_it_on_a_full_catalogue(beam: int) -> None:
    """constrain=False (only for timing the mask) must run on both first-step paths. When every code tuple is an
    item the mask removes nothing, so both searches keep the same beams and scores."""
    sizes = [8, 4]
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    codes = np.vstack([np.zeros((1, 2), dtype=np.int64), grid]).astype(np.int64)
    model = make_model("hstu", codes, sizes)
    trie = TrieTensors.for_model(model)
    history = torch.as_tensor(np.random.default_rng(7).integers(1, 33, size=(3, 5)))
    with torch.no_grad():
        items, scores = constrained_beam_search(model, history, trie, beam=beam, topk=5, exclude_history=False)
        free_items, free_scores = constrained_beam_search(model, history, trie, beam=beam, topk=5, constrain=False)
    assert free_items.shape == items.shape == (3, 5) and (free_items == 0).all()
    torch.testing.assert_close(free_scores, scores)


def test_ties_are_broken_by_lower_item_index() -> None:
    """With a zeroed output head every item has the same score: the order must be 1, 2, 3, ..."""
    rng = np.random.default_rng(6)
    sizes = [4, 4]
    codes = random_codes(rng, sizes, 12)
    model = make_model("hstu", codes, sizes)
    with torch.no_grad():
        model.decoder.embed.weight.zero_()
        items, scores = constrained_beam_search(model, torch.ones(2, 3, dtype=torch.long),
                                                TrieTensors.for_model(model), beam=16, topk=12,
                                                exclude_history=False)
    assert items.tolist() == [list(range(1, 13))] * 2
    assert torch.allclose(scores, torch.full_like(scores, -2 * np.log(4)))


def test_topk_larger_than_beam_is_rejected() -> None:
    rng = np.random.default_rng(3)
    codes = random_codes(rng, [3, 3], 5)
    model = make_model("hstu", codes, [3, 3])
    with pytest.raises(ValueError, match="topk"):
        constrained_beam_search(model, torch.ones(1, 3, dtype=torch.long), TrieTensors.for_model(model), 4, 5)


def test_ranking_module_masks_history_and_ignores_reasoning_without_fusion() -> None:
    rng = np.random.default_rng(4)
    sizes = [4, 4, 2]
    codes = random_codes(rng, sizes, 20)
    model = make_model("tiger", codes, sizes)
    ranker = RankingModule(model, beam=5).eval()
    history = torch.as_tensor(rng.integers(1, 21, size=(3, 8)))
    mask = torch.ones_like(history, dtype=torch.bool)
    mask[:, :4] = False
    reasoning, present = torch.randn(3, 2, 7), torch.tensor([True, False, True])
    with torch.no_grad():
        items, scores = ranker(history, mask, reasoning, present)
        ref_items, ref_scores = constrained_beam_search(
            model, history.masked_fill(~mask, 0), ranker.trie, beam=5
        )
    assert items.shape == (3, 5) and items.dtype == torch.int64
    torch.testing.assert_close(items, ref_items)
    torch.testing.assert_close(scores, ref_scores)


def test_empty_history_gives_finite_scores() -> None:
    rng = np.random.default_rng(5)
    codes = random_codes(rng, [4, 3], 10)
    for kind in ("tiger", "hstu"):
        model = make_model(kind, codes, [4, 3])
        with torch.no_grad():
            items, scores = constrained_beam_search(
                model, torch.zeros(2, 5, dtype=torch.long), TrieTensors.for_model(model), beam=3
            )
        assert torch.isfinite(scores).all() and (items > 0).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    frac=st.floats(0.05, 1.0),
    beam=st.integers(1, 8),
    seed=st.integers(0, 10_000),
)
def test_property_random_tries(sizes: list[int], frac: float, beam: int, seed: int) -> None:
    """Over random tries: results are real, distinct, sorted items (or padding), scores are the items' true
    log-likelihoods, and a beam covering the catalogue reproduces the exhaustive top-k."""
    rng = np.random.default_rng(seed)
    total = int(np.prod(sizes))
    n_items = max(1, int(round(frac * total)))
    codes = random_codes(rng, sizes, n_items)
    model = make_model("hstu", codes, sizes, seed=seed)
    trie = TrieTensors.for_model(model)
    history = torch.as_tensor(rng.integers(0, n_items + 1, size=(2, 4)))
    with torch.no_grad():
        items, scores = constrained_beam_search(model, history, trie, beam=beam, exclude_history=False)
    live = items > 0
    assert int(live.sum(1).min()) == min(beam, n_items)
    assert torch.isinf(scores[~live]).all() and torch.isfinite(scores[live]).all()
    for row, srow in zip(items, scores, strict=True):
        real = row[row > 0].tolist()
        assert len(set(real)) == len(real) and all(1 <= i <= n_items for i in real)
        assert (srow[:-1] >= srow[1:]).all()
    with torch.no_grad():
        rescored = model.sequence_log_prob(history, items.clamp(min=1))
    torch.testing.assert_close(scores[live], rescored[live], rtol=1e-4, atol=1e-4)
    if beam >= n_items:
        ref_items, _ = exhaustive_ranking(model, history)
        np.testing.assert_array_equal(items[:, :n_items].numpy(), ref_items)


def test_ranking_module_traces_to_onnx_and_matches_onnxruntime(tmp_path) -> None:
    """Traceability: the whole search in one ONNX graph, same items/scores in ONNX Runtime at another batch
    size. (The TorchScript exporter keeps this fast; model_export uses the dynamo exporter, checked by hand:
    identical outputs at batch 7 and history length 3 and 8.)"""
    rng = np.random.default_rng(7)
    sizes = [6, 5, 3]
    codes = random_codes(rng, sizes, 60)
    ranker = RankingModule(make_model("hstu", codes, sizes), beam=8).eval()
    assert_traces_to_onnx(ranker, 60, rng, tmp_path)


def assert_traces_to_onnx(ranker: RankingModule, n_items: int, rng: np.random.Generator, tmp_path) -> None:
    """Trace `ranker` at batch 2 (TorchScript exporter, dynamic batch) and compare ONNX Runtime with PyTorch at
    batch 5: identical items, scores to 1e-5."""
    onnxruntime = pytest.importorskip("onnxruntime")
    T = 8
    args = (torch.as_tensor(rng.integers(0, n_items + 1, (2, T))), torch.ones(2, T, dtype=torch.bool),
            torch.zeros(2, 2, 4), torch.zeros(2, dtype=torch.bool))
    path = tmp_path / "ranker.onnx"
    names = ["history", "history_mask", "reasoning", "reasoning_present"]
    torch.onnx.export(ranker, args, str(path), input_names=names, output_names=["item_ids", "scores"],
                      dynamic_axes={n: {0: "batch"} for n in names}, dynamo=False, opset_version=17)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    history = torch.as_tensor(rng.integers(0, n_items + 1, (5, T)))
    mask = history > 0
    feed = {"history": history.numpy(), "history_mask": mask.numpy(),
            "reasoning": np.zeros((5, 2, 4), np.float32), "reasoning_present": np.zeros(5, bool)}
    wanted = {i.name for i in session.get_inputs()}  # inputs the graph does not use are pruned
    items, scores = session.run(None, {k: v for k, v in feed.items() if k in wanted})
    with torch.no_grad():
        ref_items, ref_scores = ranker(history, mask, torch.zeros(5, 2, 4), torch.zeros(5, dtype=torch.bool))
    np.testing.assert_array_equal(items, ref_items.numpy())
    np.testing.assert_allclose(scores, ref_scores.numpy(), rtol=1e-5, atol=1e-5)
