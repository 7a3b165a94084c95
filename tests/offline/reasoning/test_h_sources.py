"""The reasoning-source ablations (benchmarks/h_sources.py): what each derived H keeps and what it removes."""

from __future__ import annotations

import numpy as np

from benchmarks.h_sources import constant, facts_chain, shuffled
from offline.reasoning.grounding import Grounding
from scoter import h_folder


def _real_folder(tmp_path, users: int = 7, k: int = 3, d: int = 4):
    rng = np.random.default_rng(0)
    real = tmp_path / "real"
    present = np.ones(users, bool)
    present[2] = False
    for split in h_folder.SPLITS:
        h_folder.write_split(real, split, rng.normal(size=(users, k, d)).astype(np.float32), present)
    h_folder.write_train_examples(real, rng.normal(size=(11, k, d)).astype(np.float16))
    h_folder.write_user_ids(real, [f"u{i}" for i in range(users)])
    h_folder.write_meta(real, {"K": k, "D": d, "template": ["a", "b", "c"], "source": "real"})
    return real


def test_shuffled_keeps_the_vectors_and_breaks_the_user_link(tmp_path) -> None:
    real = _real_folder(tmp_path)
    shuffled(real, tmp_path / "shuffled", seed=1)
    for split in h_folder.SPLITS:
        a, pa = h_folder.read_split(real, split)
        b, pb = h_folder.read_split(tmp_path / "shuffled", split)
        key = lambda x: sorted(map(tuple, np.asarray(x).reshape(len(x), -1)))  # noqa: E731
        assert key(a) == key(b)  # the same rows ...
        assert not np.array_equal(np.asarray(a), np.asarray(b))  # ... no longer at their users
        assert sorted(pa) == sorted(pb)
    ex_a = np.load(real / h_folder.TRAIN_EXAMPLES)
    ex_b = np.load(tmp_path / "shuffled" / h_folder.TRAIN_EXAMPLES)
    assert sorted(map(tuple, ex_a.reshape(11, -1))) == sorted(map(tuple, ex_b.reshape(11, -1)))
    assert h_folder.read_user_ids(tmp_path / "shuffled") == h_folder.read_user_ids(real)


def test_constant_is_the_mean_of_the_present_training_rows_everywhere(tmp_path) -> None:
    real = _real_folder(tmp_path)
    constant(real, tmp_path / "constant")
    h, p = h_folder.read_split(real, "train")
    want = np.asarray(h)[p].mean(axis=0)
    for split in h_folder.SPLITS:
        c, pc = h_folder.read_split(tmp_path / "constant", split)
        np.testing.assert_allclose(np.asarray(c), np.broadcast_to(want, c.shape), rtol=1e-6)
        assert np.array_equal(pc, h_folder.read_split(real, split)[1])  # absence is kept as it was
    ex = np.load(tmp_path / "constant" / h_folder.TRAIN_EXAMPLES)
    np.testing.assert_allclose(ex.astype(np.float32), np.broadcast_to(want, ex.shape), atol=1e-2)


def test_facts_chain_is_made_of_the_history_and_its_top_candidate(tiny_dataset) -> None:
    g = Grounding(tiny_dataset)
    history = [1, 2]
    chain = facts_chain(g, history, 3)
    top = g.candidates(history, 1)[0][0]
    assert len(chain) == 3 and top not in history
    assert chain[0] == g.render_profile(history)
    assert chain[1] == "; ".join(g.item_line(i) for i in history)
    assert chain[2] == g.item_line(top)
    assert len(facts_chain(g, history, 5)) == 5  # middle steps repeat the recent items


def test_the_simulated_wrong_item_is_drawn_per_row_within_the_category(tiny_dataset) -> None:
    """A fixed item-to-wrong-item map would let the fusion learn the way back to the true item."""
    from benchmarks.teacher_curve import wrong_items

    targets = np.full(200, 3)
    wrong = wrong_items(tiny_dataset, targets, np.random.default_rng(0))
    assert (wrong != 3).all() and len(set(wrong.tolist())) > 3  # many different wrong items for one target
    cat = {i: it.categories[-1] for i, it in enumerate(tiny_dataset.items, 1)}
    assert all(cat[int(w)] == cat[3] for w in wrong)
