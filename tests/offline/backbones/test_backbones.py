"""TIGER and HSTU: shapes and masks, the fusion hook, learning a planted pattern, and resumable training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offline.backbones import (
    HstuConfig,
    HstuModel,
    TigerConfig,
    TigerModel,
    TrainConfig,
    TrieTensors,
    recommend,
)
from offline.backbones.train import Trainer
from offline.data.datasets import Dataset, Item, LeaveOneOut
from offline.data.evaluation import rank_metrics
from offline.data.splits import Splits
from offline.fusion.checkpoint import load_ranking_model
from offline.fusion.model import FusionConfig, ReasoningFusion
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import load_checkpoint

torch.set_num_threads(1)
N_ITEMS, SIZES = 30, [4, 4, 2]


def planted_codes(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SIZES], indexing="ij"), -1).reshape(-1, len(SIZES))
    body = grid[rng.choice(len(grid), N_ITEMS, replace=False)]
    return np.vstack([np.zeros((1, len(SIZES)), dtype=np.int64), body])


def planted_sequences(n_users: int, seed: int = 0) -> list[np.ndarray]:
    """Every user walks the same hidden cycle over the items: the next item is a function of the last one."""
    rng = np.random.default_rng(seed)
    cycle = np.random.default_rng(123).permutation(N_ITEMS) + 1
    pos_of = {int(item): p for p, item in enumerate(cycle)}
    seqs = []
    for _ in range(n_users):
        start = pos_of[int(rng.integers(1, N_ITEMS + 1))]
        length = int(rng.integers(4, 10))
        seqs.append(cycle[(start + np.arange(length)) % N_ITEMS].astype(np.int64))
    return seqs


def planted_dataset(n_users: int = 300) -> Dataset:
    seqs = planted_sequences(n_users)
    items = [Item(item_id=str(i)) for i in range(1, N_ITEMS + 1)]
    return Dataset("planted", [f"u{i}" for i in range(n_users)], seqs, items, N_ITEMS, "synthetic")


def make(kind: str, **overrides: object):
    torch.manual_seed(0)
    if kind == "tiger":
        return TigerModel(TigerConfig.small(**overrides), planted_codes(), SIZES)
    if kind == "sasrec-sid":
        from offline.backbones.sasrec_sid import SasrecSidConfig, SasrecSidModel

        return SasrecSidModel(SasrecSidConfig.small(**overrides), planted_codes(), SIZES)
    return HstuModel(HstuConfig.small(**overrides), planted_codes(), SIZES)


@pytest.mark.parametrize("kind", ["tiger", "hstu", "sasrec-sid"])
def test_encode_shapes_and_padding_mask(kind: str) -> None:
    model = make(kind).eval()
    history = torch.tensor([[0, 0, 0, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0, 0, 9]])
    h_seq, mask = model.encode(history)
    per_item = model.code_length if kind == "tiger" else 1
    assert h_seq.shape[:2] == (2, 8 * per_item) and mask.shape == (2, 8 * per_item)
    assert mask.sum(1).tolist() == [5 * per_item, 1 * per_item]
    # left padding must not change the states of real positions
    h_short, _ = model.encode(history[:, 3:])
    torch.testing.assert_close(h_seq[0, -5 * per_item :], h_short[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["tiger", "hstu", "sasrec-sid"])
def test_fusion_hook_is_applied_only_when_reasoning_is_present(kind: str) -> None:
    model = make(kind).eval()
    d = model.config.d_model
    model.fusion = ReasoningFusion(FusionConfig.small(d_item=d, heads=2 if d % 2 == 0 else 1)).eval()
    history = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]] * 2)
    H = torch.randn(2, 3, 16)
    base, _ = model.memory(history)
    fused, _ = model.memory(history, H, torch.tensor([True, False]))
    torch.testing.assert_close(fused[1], base[1])  # absent -> backbone path exactly
    assert not torch.allclose(fused[0], base[0])
    model.train()
    loss, parts = model.loss(history, torch.tensor([8, 9]), H, torch.tensor([True, True]))
    assert "aux" in parts and torch.isfinite(loss)
    loss.backward()
    assert model.fusion.adapter[0].weight.grad is not None


def test_bad_codes_name_the_field() -> None:
    with pytest.raises(ValueError, match="codebook_sizes"):
        HstuModel(HstuConfig.small(), planted_codes(), [4, 4])
    bad = planted_codes()
    bad[3, 0] = 9
    with pytest.raises(ValueError, match="codes"):
        TigerModel(TigerConfig.small(), bad, SIZES)


@pytest.mark.parametrize("kind,steps", [("hstu", 150), ("tiger", 150)])
def test_learns_a_planted_pattern(kind: str, steps: int) -> None:
    """The next item is a deterministic function of the last one; both backbones must find it (chance level
    is Recall@1 = 1/30, Recall@5 = 1/6)."""
    loo = LeaveOneOut(planted_dataset(), max_len=8)
    hist, tgt = (torch.as_tensor(a) for a in loo.train_examples())
    model = make(kind)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(tgt), (64,), generator=gen)
        loss, _ = model.loss(hist[idx], tgt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_hist, t_tgt = loo.eval_examples("test")
    items, _ = recommend(model, t_hist, 5, TrieTensors.for_model(model), beam=5)
    metrics = rank_metrics(items, t_tgt, ks=(1, 5))
    np.testing.assert_array_equal(model.recommend(t_hist, 5, beam=5)[0], items)  # the harness's entry point
    assert "_trie_cache" not in "".join(model.state_dict())
    assert metrics["recall@1"] > 0.6 and metrics["recall@5"] > 0.85, metrics


def test_trainer_checkpoints_resumes_and_writes_results(tmp_path) -> None:
    ds = planted_dataset(120)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    codes = SemanticIds(codes=planted_codes(), codebook_sizes=SIZES)
    small = HstuConfig.small().model_dump()
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, warmup_steps=5, beam=5, eval_users=50, patience=5)
    Trainer("hstu", splits, codes, tmp_path, cfg, small, device="cpu").fit()
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    resumed = Trainer("hstu", splits, codes, tmp_path, cfg.model_copy(update={"epochs": 2}), None, device="cpu")
    assert resumed.epoch == 1 and not resumed.finished  # loaded from last.pt, one more epoch to go
    resumed.fit()
    assert resumed.epoch == 2
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    metrics = resumed.final_evaluation(progress=False)
    assert set(metrics) == {"valid", "test"} and 0.0 <= metrics["test"]["recall@5"] <= 1.0
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["epochs_trained"] == 2 and doc["metrics"]["test"] == metrics["test"]
    model = load_ranking_model(tmp_path / "best.pt", codes)
    assert isinstance(model, HstuModel)


def test_time_budget_stops_early_without_finishing(tmp_path) -> None:
    ds = planted_dataset(120)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    codes = SemanticIds(codes=planted_codes(), codebook_sizes=SIZES)
    cfg = TrainConfig(epochs=50, batch_size=8, beam=5, eval_users=20, time_budget_s=0.5)
    trainer = Trainer("tiger", splits, codes, tmp_path, cfg, TigerConfig.small().model_dump(), device="cpu")
    trainer.fit()
    assert trainer.epoch < 50 and not trainer.finished  # can be continued elsewhere


class _ClockedTrainer(Trainer):
    """Each training step advances a fake clock by one second and records the learning rate it used: the
    budget and the cosine schedule then depend on steps, not on this machine's speed."""

    clock = [0.0]
    lrs: list[float] = []

    def batch_loss(self, idx, hist, tgt):
        type(self).lrs.append(self.opt.param_groups[0]["lr"])
        type(self).clock[0] += 1.0
        return super().batch_loss(idx, hist, tgt)


@pytest.fixture
def fake_clock(monkeypatch):
    import types

    import offline.backbones.train as train_mod

    _ClockedTrainer.clock, _ClockedTrainer.lrs = [0.0], []
    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(monotonic=lambda: _ClockedTrainer.clock[0]))
    return _ClockedTrainer


def _budget_run(tmp_path, trainer_cls, epochs: int, budget: float):
    ds = planted_dataset(40)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    codes = SemanticIds(codes=planted_codes(), codebook_sizes=SIZES)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, warmup_steps=0, schedule="cosine", beam=5,
                      eval_users=10, patience=100, time_budget_s=budget)
    return trainer_cls("hstu", splits, codes, tmp_path, cfg, HstuConfig.small().model_dump(), device="cpu")


def test_a_resumed_budget_run_continues_its_schedule_and_budget(tmp_path, fake_clock) -> None:
    """Killed after epoch 1 and resumed, a time-budgeted run takes the same learning rates and stops after the
    same number of steps as one never interrupted (it used to restart the cosine and grant a fresh budget)."""
    whole = _budget_run(tmp_path / "whole", fake_clock, epochs=100, budget=30.0)
    whole.fit()
    lrs_whole, steps_whole = list(fake_clock.lrs), whole.step
    assert not whole.finished and steps_whole < 40  # the budget, not the epochs, ended it

    fake_clock.clock[0], fake_clock.lrs[:] = 0.0, []
    first = _budget_run(tmp_path / "split", fake_clock, epochs=1, budget=30.0)
    first.fit()  # "killed" after one epoch: last.pt holds the time used so far
    assert load_checkpoint(tmp_path / "split" / "last.pt")["elapsed_s"] == first.step
    fake_clock.clock[0] = 1000.0  # the machine's clock moved on while the run was down
    resumed = _budget_run(tmp_path / "split", fake_clock, epochs=100, budget=30.0)
    assert resumed.step == first.step and resumed.elapsed_s() == first.step
    resumed.fit()
    assert resumed.step == steps_whole
    np.testing.assert_allclose(fake_clock.lrs, lrs_whole)
    assert lrs_whole[-1] < 0.2 * lrs_whole[0]  # and it annealed


def test_a_used_up_budget_trains_no_more_until_it_is_raised(tmp_path, fake_clock, caplog) -> None:
    done = _budget_run(tmp_path, fake_clock, epochs=100, budget=6.0)
    done.fit()
    steps = done.step
    again = _budget_run(tmp_path, fake_clock, epochs=100, budget=6.0)
    with caplog.at_level("WARNING"):
        again.fit()
    assert again.step == steps and "larger --time-budget" in caplog.text
    more = _budget_run(tmp_path, fake_clock, epochs=100, budget=12.0)
    more.fit()
    assert more.step > steps and load_checkpoint(tmp_path / "last.pt")["elapsed_s"] >= 12.0


def test_best_weights_warm_start_a_new_run(tmp_path) -> None:
    """A model trained elsewhere (its best.pt) seeds a fresh run folder; another backbone's weights are refused."""
    ds = planted_dataset(60)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    codes = SemanticIds(codes=planted_codes(), codebook_sizes=SIZES)
    cfg = TrainConfig(epochs=1, batch_size=64, beam=5, eval_users=20)
    first = Trainer("hstu", splits, codes, tmp_path / "a", cfg, HstuConfig.small().model_dump(), device="cpu")
    first.fit()
    weights = tmp_path / "a" / "best.pt"
    second = Trainer("hstu", splits, codes, tmp_path / "b", cfg, None, device="cpu", init_from=weights)
    assert second.model.config == first.model.config and second.epoch == 0
    best = torch.load(tmp_path / "a" / "best.pt")["model"]
    for name, value in second.model.state_dict().items():
        torch.testing.assert_close(value, best[name].to(value.dtype), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="init_from"):
        Trainer("tiger", splits, codes, tmp_path / "c", cfg, None, device="cpu", init_from=weights)


def test_hstu_sid_only_input_has_no_item_table() -> None:
    """item_id_embedding=False: the input is the sum of the semantic-ID embeddings only (no n_items x d table),
    and items sharing every code get the same input vector."""
    model = make("hstu", item_id_embedding=False).eval()
    assert model.item_emb is None and not any(k.startswith("item_emb") for k in model.state_dict())
    codes = model.codes.clone()
    codes[2] = codes[1]
    model.codes.copy_(codes)
    emb = model.item_embedding(torch.tensor([1, 2, 3]))
    torch.testing.assert_close(emb[0], emb[1])
    assert not torch.allclose(emb[0], emb[2])
    h_seq, mask = model.encode(torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]]))
    assert h_seq.shape == (1, 8, model.config.d_model) and mask.sum() == 3


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_early_stop_before_the_cosine_anneals_is_warned(tmp_path, caplog, schedule: str) -> None:
    """A near-zero learning rate never improves validation, so patience 1 stops at epoch 2 of 100: under a cosine
    schedule sized to 100 epochs the rate is still near its peak then, which the log must say."""
    ds = planted_dataset(60)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    codes = SemanticIds(codes=planted_codes(), codebook_sizes=SIZES)
    cfg = TrainConfig(epochs=100, batch_size=64, beam=5, eval_users=20, patience=1, lr=1e-12, warmup_steps=0,
                      schedule=schedule)
    trainer = Trainer("hstu", splits, codes, tmp_path, cfg, HstuConfig.small().model_dump(), device="cpu")
    with caplog.at_level("WARNING", logger="offline.backbones.train"):
        trainer.fit()
    assert trainer.epoch < 100
    warned = [r for r in caplog.records if "never annealed" in r.getMessage()]
    assert len(warned) == (1 if schedule == "cosine" else 0)
