"""The item-aware head: prefix node ids follow the trie, all-position training is the per-prefix objective in one
pass, the planted pattern is learned through the trainer, and the beam search traces into ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline.backbones import (
    HstuConfig,
    HstuModel,
    RankingModule,
    TigerConfig,
    TigerModel,
    TrainConfig,
    TrieTensors,
)
from offline.backbones.train import Trainer
from offline.data.datasets import LeaveOneOut
from offline.data.evaluation import rank_metrics
from offline.data.splits import Splits
from offline.semantic_ids.codes import SemanticIds
from offline.semantic_ids.trie import PrefixTrie, prefix_node_ids
from tests.offline.backbones.test_backbones import SIZES, planted_codes, planted_dataset
from tests.offline.backbones.test_beam_search import assert_traces_to_onnx

torch.set_num_threads(1)


def item_model(**overrides: object) -> HstuModel:
    torch.manual_seed(0)
    return HstuModel(HstuConfig.small(head="item", **overrides), planted_codes(), SIZES)


def test_prefix_node_ids_are_the_tries_nodes() -> None:
    body = planted_codes()[1:]
    trie = PrefixTrie.from_codes(body, SIZES)
    nodes = prefix_node_ids(body)
    assert len(nodes) == len(SIZES) - 1
    for item, row in enumerate(body):
        node = 0
        for depth, code in enumerate(row[:-1], start=1):
            node = trie.next_node[depth - 1][node, code]
            assert nodes[depth - 1][item] == node


def test_the_item_head_has_no_code_decoder_and_ties_its_leaf_to_the_input_table() -> None:
    model = item_model()
    assert not hasattr(model, "decoder") and model.all_positions
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.startswith("decoder") for name in names)
    # the leaf reads the encoder's own item representation: a change to an input row moves that item's score
    history = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4]])
    before = model.sequence_log_prob(history, torch.tensor([[7]]))
    with torch.no_grad():
        model.item_emb.weight[7] += torch.randn(model.config.d_model)  # not constant: LN output sums to 0
    assert not torch.allclose(before, model.sequence_log_prob(history, torch.tensor([[7]])))


def test_all_position_loss_is_the_per_prefix_loss_in_one_pass() -> None:
    """Without position embeddings (the one thing that differs: a prefix's newest item sits in the last slot)
    the loss at every position of one pass equals the mean of the per-prefix losses."""
    model = item_model().eval()
    with torch.no_grad():
        model.pos_emb.weight.zero_()
    ds = planted_dataset(12)
    loo = LeaveOneOut(ds, max_len=8)
    inputs, targets = (torch.as_tensor(a) for a in loo.train_sequence_examples())
    hist, tgt = (torch.as_tensor(a) for a in loo.train_examples())
    seq_loss, seq_parts = model.sequence_loss(inputs, targets)
    prefix_loss, prefix_parts = model.loss(hist, tgt)
    assert int((targets > 0).sum()) == len(tgt)  # the same rows
    torch.testing.assert_close(seq_loss, prefix_loss, rtol=1e-4, atol=1e-5)
    assert seq_parts.keys() == prefix_parts.keys() == {"ce", "prefix"}


def test_training_rows_never_contain_validation_or_test_targets() -> None:
    ds = planted_dataset(40)
    inputs, targets = LeaveOneOut(ds, max_len=8).train_sequence_examples()
    for row, seq in enumerate(ds.sequences):
        train = seq[:-2]
        real = targets[row] > 0
        np.testing.assert_array_equal(targets[row][real], train[1:][-8:])
        np.testing.assert_array_equal(inputs[row][real], train[:-1][-8:])


def train_on_the_planted_pattern(tmp_path, backbone: str, model_cfg: dict, epochs: int, lr: float):
    """A Trainer run on 300 planted users; returns (trainer, test Recall@1/@5 of its last weights: early
    stopping watches Recall@5, which saturates at 1.0 long before Recall@1 does). Chance is Recall@1 = 1/30."""
    ds = planted_dataset(300)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    codes = SemanticIds(codes=planted_codes(), codebook_sizes=SIZES)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=lr, warmup_steps=5, beam=5, eval_users=100, patience=epochs,
                      weight_decay=0.0)
    trainer = Trainer(backbone, splits, codes, tmp_path, cfg, model_cfg, device="cpu")
    assert trainer.training_arrays()[0].shape == (300, 8)  # one row per user, not one per prefix
    trainer.fit()
    items, _ = trainer.model.recommend(splits.test[0], 5, beam=5)
    return trainer, rank_metrics(items, splits.test[1], ks=(1, 5))


def test_trainer_learns_the_planted_pattern_with_the_item_head(tmp_path) -> None:
    """Through the trainer's all-position path."""
    _, metrics = train_on_the_planted_pattern(tmp_path, "hstu", HstuConfig.small(head="item").model_dump(), 25, 5e-3)
    assert metrics["recall@1"] > 0.6 and metrics["recall@5"] > 0.85, metrics


def tiger_item_model() -> TigerModel:
    torch.manual_seed(0)
    return TigerModel(TigerConfig.small(head="item"), planted_codes(), SIZES)


def test_tiger_item_head_is_block_causal_and_ties_its_leaf_to_the_input_item_table() -> None:
    """A history item's state depends on it and earlier items only (so one pass trains every position), and is
    the same whether later items are present or not; the leaf is the input item table."""
    model = tiger_item_model().eval()
    assert not hasattr(model, "decoder") and model.all_positions
    history = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        full, mask = model.encode(history)
        later = history.clone()
        later[0, -2:] = torch.tensor([9, 10])
        changed, _ = model.encode(later)
    assert full.shape == (1, 8, model.config.d_model) and mask.tolist() == [[False, False] + [True] * 6]
    torch.testing.assert_close(full[:, :6], changed[:, :6])
    assert not torch.allclose(full[:, 6:], changed[:, 6:])
    assert torch.equal(model.item_table(), model.item_emb.weight)


def test_trainer_learns_the_planted_pattern_with_the_tiger_item_head(tmp_path) -> None:
    _, metrics = train_on_the_planted_pattern(tmp_path, "tiger", TigerConfig.small(head="item").model_dump(), 25,
                                              5e-3)
    assert metrics["recall@1"] > 0.6 and metrics["recall@5"] > 0.85, metrics


@pytest.mark.parametrize("prior_weight", [0.0, 1.0])
def test_item_head_beam_traces_to_onnx_and_matches_onnxruntime(tmp_path, prior_weight: float) -> None:
    model = item_model(prior_weight=prior_weight).eval()
    with torch.no_grad():
        model.head.item_bias.normal_(0.0, 2.0)
    ranker = RankingModule(model, TrieTensors.for_model(model), beam=6).eval()
    assert_traces_to_onnx(ranker, 30, np.random.default_rng(3), tmp_path)


def test_tiger_item_head_beam_traces_to_onnx_and_matches_onnxruntime(tmp_path) -> None:
    model = tiger_item_model().eval()
    ranker = RankingModule(model, TrieTensors.for_model(model), beam=6).eval()
    assert_traces_to_onnx(ranker, 30, np.random.default_rng(4), tmp_path)


# -- SASRec's encoder with the item-aware head -----------------------------------------------------------------
def test_sasrec_sid_started_from_a_sasrec_checkpoint_scores_items_as_that_sasrec(tmp_path) -> None:
    """With no prefix prior in the beam (the default) and the item bias at its zero init, the generative model's
    beam scores are SASRec's full-catalogue log-softmax, and its top items SASRec's."""
    from offline.backbones.sasrec_sid import SasrecSidConfig, SasrecSidModel, init_from_sasrec
    from offline.baselines.sasrec import SasrecModel, _state
    from offline.training_utils import save_checkpoint

    ds = planted_dataset(20)
    cfg = SasrecSidConfig.small()
    torch.manual_seed(1)
    sasrec = SasrecModel(ds.n_items, cfg.sasrec()).eval()
    save_checkpoint(tmp_path / "sasrec.pt", _state(sasrec, cfg.sasrec(), ds, epoch=0))
    model = SasrecSidModel(cfg, planted_codes(), SIZES).eval()
    init_from_sasrec(model, tmp_path / "sasrec.pt")
    history = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0, 9, 8]])
    items = torch.arange(1, ds.n_items + 1).repeat(2, 1)
    with torch.no_grad():
        ours = model.sequence_log_prob(history, items)
        ref = torch.log_softmax(sasrec(history)[:, 1:], -1)
        top, _ = model.recommend(history.numpy(), 5, beam=30)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(top, sasrec.recommend(history.numpy(), 5)[0])


def test_sasrec_sid_refuses_a_checkpoint_with_other_sizes(tmp_path) -> None:
    from offline.backbones.sasrec_sid import SasrecSidConfig, SasrecSidModel, init_from_sasrec
    from offline.baselines.sasrec import SasrecModel, _state
    from offline.training_utils import save_checkpoint

    ds = planted_dataset(20)
    other = SasrecSidConfig.small(d_model=16).sasrec()
    save_checkpoint(tmp_path / "sasrec.pt", _state(SasrecModel(ds.n_items, other), other, ds, epoch=0))
    with pytest.raises(ValueError, match="field hidden"):
        init_from_sasrec(SasrecSidModel(SasrecSidConfig.small(), planted_codes(), SIZES), tmp_path / "sasrec.pt")


def test_trainer_learns_the_planted_pattern_with_sasrecs_encoder(tmp_path) -> None:
    from offline.backbones.sasrec_sid import SasrecSidConfig

    _, metrics = train_on_the_planted_pattern(tmp_path, "sasrec-sid", SasrecSidConfig.small().model_dump(), 40, 1e-2)
    assert metrics["recall@1"] > 0.6 and metrics["recall@5"] > 0.85, metrics


def test_trainer_trains_every_window_unless_told_not_to(tmp_path) -> None:
    """TrainConfig.sub_windows reaches the rows an epoch shuffles: with a 3-item window, long users add rows."""
    ds = planted_dataset(20)
    loo = LeaveOneOut(ds, max_len=3)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    codes = SemanticIds(codes=planted_codes(), codebook_sizes=SIZES)
    rows = {}
    for sub in (True, False):
        cfg = TrainConfig(epochs=1, batch_size=8, beam=5, eval_users=10, sub_windows=sub)
        trainer = Trainer("hstu", splits, codes, tmp_path / str(sub), cfg,
                          HstuConfig.small(head="item", max_len=3).model_dump(), device="cpu")
        inputs, targets = trainer.training_arrays()
        np.testing.assert_array_equal(targets, loo.train_sequence_examples(sub_windows=sub)[1])
        rows[sub] = len(inputs)
    assert rows[False] == len(ds.user_ids) < rows[True]
    assert int((loo.train_sequence_examples(sub_windows=True)[1] > 0).sum()) == len(splits.train[1])
