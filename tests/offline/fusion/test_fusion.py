"""ReasoningFusion behaviour: shapes, masking, the presence flag, step order, InfoNCE, and that a fused model
actually learns to use a reasoning signal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from offline.fusion.model import ABLATIONS, FusionConfig, ReasoningFusion, info_nce

torch.set_num_threads(1)


def _inputs(cfg: FusionConfig, B: int = 4, T: int = 6, K: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, cfg.d_item, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False  # left padding on the first row
    H = torch.randn(B, K, cfg.reasoning_dim, generator=g)
    present = torch.tensor([True, True, False, True])[:B]
    return h, mask, H, present


def test_shapes_and_padding_untouched() -> None:
    cfg = FusionConfig.small()
    fusion = ReasoningFusion(cfg).eval()
    h, mask, H, present = _inputs(cfg)
    out = fusion(h, mask, H, present)
    assert out.shape == h.shape
    assert torch.equal(out[0, :2], h[0, :2])  # padded positions pass through
    assert not torch.allclose(out[0, 2:], h[0, 2:])  # real positions are fused
    assert fusion.project(H).shape == (4, 5, cfg.d_item)


@pytest.mark.parametrize("d_item,heads,inner", [(50, 4, 52), (128, 6, 132), (64, 4, 64)])
def test_head_divisible_inner_dim(d_item: int, heads: int, inner: int) -> None:
    cfg = FusionConfig(d_item=d_item, heads=heads, reasoning_dim=8)
    assert cfg.inner_dim == inner
    fusion = ReasoningFusion(cfg).eval()
    out = fusion(torch.randn(2, 3, d_item), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 4, 8),
                 torch.ones(2, dtype=torch.bool))
    assert out.shape == (2, 3, d_item)


def test_bad_config_and_input_name_the_field() -> None:
    with pytest.raises(ValueError, match="attn_dim"):
        FusionConfig(d_item=50, heads=4, attn_dim=50)
    fusion = ReasoningFusion(FusionConfig.small()).eval()
    with pytest.raises(ValueError, match="H: expected"):
        fusion.project(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="max_steps"):
        fusion.project(torch.randn(2, 9, 16))
    with pytest.raises(ValueError, match="ablation"):
        FusionConfig.ablation("nope", FusionConfig.small())


def test_absent_rows_equal_backbone_and_ignore_H() -> None:
    cfg = FusionConfig.small()
    fusion = ReasoningFusion(cfg).eval()
    h, mask, H, present = _inputs(cfg)
    out1 = fusion(h, mask, H, present)
    H2 = H.clone()
    H2[2] = float("nan")  # garbage in the absent row must not matter
    out2 = fusion(h, mask, H2, present)
    assert torch.equal(out1[2], h[2])
    assert torch.equal(out2[2], h[2])
    assert torch.equal(out1[[0, 1, 3]], out2[[0, 1, 3]])  # other rows unaffected by row 2's H
    none = torch.zeros(4, dtype=torch.bool)
    assert torch.equal(fusion(h, mask, torch.randn_like(H), none), h)


def test_absent_rows_get_no_gradient_from_H() -> None:
    fusion = ReasoningFusion(FusionConfig.small()).eval()
    h, mask, H, present = _inputs(FusionConfig.small())
    H = H.clone().requires_grad_(True)
    fusion(h, mask, H, present).sum().backward()
    assert torch.all(H.grad[2] == 0) and H.grad[0].abs().sum() > 0


def test_training_drops_presence_at_the_configured_rate() -> None:
    cfg = FusionConfig.small(absent_rate=0.3, dropout=0.0)
    fusion = ReasoningFusion(cfg).train()
    torch.manual_seed(0)
    B = 2000
    h = torch.randn(B, 2, cfg.d_item)
    out = fusion(h, torch.ones(B, 2, dtype=torch.bool), torch.randn(B, 3, cfg.reasoning_dim),
                 torch.ones(B, dtype=torch.bool))
    dropped = (out == h).all(dim=-1).all(dim=-1).float().mean().item()
    assert 0.25 < dropped < 0.35
    fusion.eval()
    out = fusion(h, torch.ones(B, 2, dtype=torch.bool), torch.randn(B, 3, cfg.reasoning_dim),
                 torch.ones(B, dtype=torch.bool))
    assert not (out == h).all(dim=-1).all(dim=-1).any()  # no dropping at inference


@pytest.mark.parametrize("use_position", [True, False])
def test_step_order_matters_only_with_positions(use_position: bool) -> None:
    cfg = FusionConfig.small(use_position=use_position)
    fusion = ReasoningFusion(cfg).eval()
    with torch.no_grad():
        fusion.positions.weight.normal_(std=1.0)  # trained-scale positions, so the effect is not tiny
    h, mask, H, present = _inputs(cfg)
    perm = torch.tensor([4, 2, 0, 1, 3])
    a, b = fusion(h, mask, H, present), fusion(h, mask, H[:, perm], present)
    if use_position:
        assert (a - b).abs().max() > 1e-3
    else:
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["mean", "last", "single_vector"])
def test_pooled_modes_use_one_key(mode: str) -> None:
    cfg = FusionConfig.ablation(mode, FusionConfig.small())
    fusion = ReasoningFusion(cfg).eval()
    h, mask, H, present = _inputs(cfg)
    assert fusion.project(H).shape == (4, 1, cfg.d_item)
    out = fusion(h, mask, H, present)
    assert out.shape == h.shape
    if mode == "last":  # only the last step may influence the output
        H2 = H.clone()
        H2[:, :-1] = torch.randn_like(H2[:, :-1])
        torch.testing.assert_close(out, fusion(h, mask, H2, present))


def test_every_ablation_builds() -> None:
    for name in ABLATIONS:
        ReasoningFusion(FusionConfig.ablation(name, FusionConfig.small()))


def test_info_nce_prefers_aligned_pairs_and_masks_duplicates() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(8, 12, generator=g)
    aligned = info_nce(v + 0.01 * torch.randn(8, 12, generator=g), v)
    shuffled = info_nce(v[torch.randperm(8, generator=g)], v)
    assert aligned < shuffled
    # Two rows with the same target item: masking removes the false negative, so the loss can only drop.
    ids = torch.tensor([1, 1, 2, 3, 4, 5, 6, 7])
    v2 = v.clone()
    v2[1] = v2[0]
    assert info_nce(v2, v2, target_ids=ids) < info_nce(v2, v2)


def test_contrastive_loss_zero_when_disabled_or_all_absent() -> None:
    cfg = FusionConfig.small()
    H = torch.randn(3, 4, cfg.reasoning_dim)
    tgt = torch.randn(3, cfg.d_item)
    assert ReasoningFusion(cfg.model_copy(update={"contrastive_weight": 0.0})).contrastive_loss(
        H, torch.ones(3, dtype=torch.bool), tgt) == 0
    assert ReasoningFusion(cfg).contrastive_loss(H, torch.zeros(3, dtype=torch.bool), tgt) == 0
    assert ReasoningFusion(cfg).contrastive_loss(H, torch.ones(3, dtype=torch.bool), tgt) > 0


class _TinyRecommender(nn.Module):
    """A minimal sequence model (item embeddings + one transformer layer, dot-product scoring) used only to check
    that the fusion module can carry a planted signal; the real backbones are tested by their own suite."""

    def __init__(self, n_items: int, d: int, fusion: ReasoningFusion | None) -> None:
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.enc = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True)
        self.fusion = fusion

    def forward(self, hist, H, present):
        mask = hist > 0
        h = self.enc(self.emb(hist), src_key_padding_mask=~mask)
        if self.fusion is not None:
            h = self.fusion(h, mask, H, present)
        return h[:, -1] @ self.emb.weight.T


def _train_planted(use_fusion: bool, seed: int = 0) -> tuple[float, float]:
    """Targets are random given the history, but step K of H encodes the target item. Returns (acc with H,
    acc with H absent)."""
    torch.manual_seed(seed)
    n_items, D, K, T, d = 30, 16, 3, 5, 24
    item_code = torch.randn(n_items + 1, D)
    cfg = FusionConfig.small(reasoning_dim=D, d_item=d, absent_rate=0.2, dropout=0.0)
    fusion = ReasoningFusion(cfg) if use_fusion else None
    model = _TinyRecommender(n_items, d, fusion)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(B: int):
        hist = torch.randint(1, n_items + 1, (B, T))
        tgt = torch.randint(1, n_items + 1, (B,))
        H = torch.randn(B, K, D) * 0.5
        H[:, -1] = item_code[tgt] + 0.1 * torch.randn(B, D)
        return hist, tgt, H

    for _ in range(250):
        hist, tgt, H = batch(64)
        present = torch.ones(64, dtype=torch.bool)
        model.train()
        logits = model(hist, H, present)
        loss = nn.functional.cross_entropy(logits[:, 1:], tgt - 1)
        if fusion is not None:
            loss = loss + cfg.contrastive_weight * fusion.contrastive_loss(H, present, model.emb(tgt), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    hist, tgt, H = batch(500)
    with torch.no_grad():
        acc = (model(hist, H, torch.ones(500, dtype=torch.bool))[:, 1:].argmax(-1) + 1 == tgt).float().mean()
        acc_absent = (model(hist, H, torch.zeros(500, dtype=torch.bool))[:, 1:].argmax(-1) + 1 == tgt)
    return acc.item(), acc_absent.float().mean().item()


def test_fused_model_learns_planted_signal() -> None:
    fused, fused_absent = _train_planted(use_fusion=True)
    plain, _ = _train_planted(use_fusion=False)
    chance = 1 / 30
    assert fused > 0.5, fused
    assert plain < 3 * chance, plain
    assert fused > plain + 0.3
    assert fused_absent < 3 * chance  # without H the signal is gone, nothing leaks through another path


# -- integration with the real backbones and the backbones' Trainer (tiny synthetic catalogue) ------------------
def _tiny_world(n_users: int = 48, n_items: int = 24, seed: int = 0):
    """A synthetic dataset where each user's next item is random, and its semantic IDs (2 levels of 5 codes)."""
    import numpy as np

    from offline.data.datasets import Dataset, Item, LeaveOneOut
    from offline.data.splits import Splits
    from offline.semantic_ids.codes import SemanticIds

    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, n_items + 1, size=int(rng.integers(5, 9))).astype(np.int64) for _ in range(n_users)]
    ds = Dataset(name="tiny", user_ids=[f"u{i}" for i in range(n_users)], sequences=seqs,
                 items=[Item(item_id=f"i{i}") for i in range(1, n_items + 1)], n_items=n_items, checksum="tiny")
    raw = np.stack([np.arange(n_items) // 5, np.arange(n_items) % 5], 1)
    codes = SemanticIds.from_raw(raw, 5)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    return ds, splits, codes


def _planted_reasoning(ds, D: int = 16, K: int = 3, seed: int = 1):
    """H whose last step encodes the row's *target* item: a planted signal only, to prove the wiring end to end
    (real runs must never do this; see history_text_reasoning / the student H)."""
    import numpy as np

    from scoter.h_folder import ReasoningArrays

    rng = np.random.default_rng(seed)
    code = rng.normal(size=(ds.n_items + 1, D)).astype(np.float32)
    H = {}
    for split, cut in (("train", 2), ("valid", 2), ("test", 1)):
        h = rng.normal(scale=0.3, size=(ds.n_users, K, D)).astype(np.float32)
        h[:, -1] = code[[s[-cut] for s in ds.sequences]]
        H[split] = h
    return ReasoningArrays(H, {s: np.ones(ds.n_users, bool) for s in H}, "planted(test only)")


@pytest.mark.parametrize("backbone", ["tiger", "hstu", "sasrec-sid"])
def test_scoter_trainer_trains_evaluates_and_resumes(backbone: str, tmp_path) -> None:
    from offline.backbones.config import HstuConfig, TigerConfig, TrainConfig
    from offline.backbones.sasrec_sid import SasrecSidConfig
    from offline.fusion.checkpoint import load_ranking_model
    from offline.fusion.train import ScoterTrainer

    ds, splits, codes = _tiny_world()
    reasoning = _planted_reasoning(ds)
    small = {"tiger": TigerConfig.small, "hstu": HstuConfig.small, "sasrec-sid": SasrecSidConfig.small}[backbone]
    model_cfg = small().model_dump()
    fcfg = FusionConfig.small(reasoning_dim=16, d_item=model_cfg["d_model"], heads=4)
    tcfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, warmup_steps=0, beam=10, eval_users=0, patience=5)
    trainer = ScoterTrainer(backbone, splits, codes, tmp_path, tcfg, fcfg, reasoning, model_cfg, device="cpu")
    trainer.fit()
    metrics = trainer.final_evaluation(progress=False)
    assert set(metrics) >= {"valid", "test", "test_h_absent", "test_subgroups"}
    assert 0.0 <= metrics["test"]["recall@10"] <= 1.0
    # resume: a new trainer on the same folder continues from the checkpoint, fusion weights included
    again = ScoterTrainer(backbone, splits, codes, tmp_path, tcfg.model_copy(update={"epochs": 3}), fcfg,
                          reasoning, model_cfg, device="cpu")
    assert again.epoch == 2
    from offline.training_utils import load_checkpoint

    saved = load_checkpoint(tmp_path / "last.pt")["model"]["fusion.gate.weight"]
    torch.testing.assert_close(again.model.fusion.gate.weight, saved)
    model = load_ranking_model(tmp_path / "best.pt", codes)
    assert isinstance(model.fusion, ReasoningFusion)


def test_scoter_trainer_rejects_mismatched_reasoning(tmp_path) -> None:
    import numpy as np

    from offline.backbones.config import HstuConfig, TrainConfig
    from offline.fusion.train import ScoterTrainer
    from scoter.h_folder import ReasoningArrays

    ds, splits, codes = _tiny_world()
    bad = ReasoningArrays({s: np.zeros((ds.n_users - 1, 3, 16), np.float32) for s in ("train", "valid", "test")},
                          {s: np.ones(ds.n_users - 1, bool) for s in ("train", "valid", "test")}, "bad")
    fcfg = FusionConfig.small(reasoning_dim=16, d_item=24)
    with pytest.raises(ValueError, match="H_train"):
        ScoterTrainer("hstu", splits, codes, tmp_path, TrainConfig(epochs=1), fcfg, bad,
                      HstuConfig.small().model_dump(), device="cpu")
    assert not any(tmp_path.iterdir())  # nothing written on bad input


def test_reasoning_roundtrip_and_alignment_by_user_id(tmp_path) -> None:
    import json

    import numpy as np

    from scoter.h_folder import load_reasoning, save_reasoning

    ds, _, _ = _tiny_world(n_users=10)
    arrays = _planted_reasoning(ds)
    save_reasoning(tmp_path, arrays, ds.user_ids)
    back = load_reasoning(tmp_path, ds.user_ids)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(back.H[s], arrays.H[s])
    # a store that covers only some users, in another order: rows follow user ids, the rest are absent
    sub = tmp_path / "sub"
    sub.mkdir()
    for s in ("train", "valid", "test"):
        np.save(sub / f"H_{s}.npy", arrays.H[s][[3, 1]])
    (sub / "user_ids.json").write_text(json.dumps(["u3", "u1"]))
    part = load_reasoning(sub, ds.user_ids)
    assert part.present["test"].tolist() == [i in (1, 3) for i in range(10)]
    np.testing.assert_array_equal(part.H["test"][3], arrays.H["test"][3])
    np.save(sub / "H_valid.npy", np.zeros((2, 4, 16), np.float32))
    with pytest.raises(ValueError, match="H_valid.npy"):
        load_reasoning(sub, ds.user_ids)


def test_history_text_stand_in_uses_training_signal_only() -> None:
    import numpy as np

    from tests.offline.fusion.stand_in import history_text_reasoning, next_item_table

    ds, _, _ = _tiny_world(n_users=12)
    vec = np.random.default_rng(0).normal(size=(ds.n_items + 1, 8)).astype(np.float32)
    base = history_text_reasoning(ds, vec, steps=3)
    assert base.H["test"].shape == (12, 3, 8)
    # changing every user's test target (last item) must not change any H
    ds2 = type(ds)(ds.name, ds.user_ids, [np.r_[s[:-1], (s[-1] % ds.n_items) + 1] for s in ds.sequences],
                   ds.items, ds.n_items, ds.checksum)
    moved = history_text_reasoning(ds2, vec, steps=3)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(base.H[s], moved.H[s])
    table = next_item_table([np.array([1, 2, 1, 2, 1, 3])], 4)
    assert table.tolist() == [0, 2, 1, 0, 0]


def test_cli_registers_without_torch_and_names_match() -> None:
    import subprocess
    import sys

    code = ("import sys; from scoter.cli import build_parser; p = build_parser(); "
            "a = p.parse_args(['train', 'scoter', '--backbone', 'hstu', '--dataset', 'd', '--ablation', 'no_position']); "
            "assert a.func.__name__ == '_train_scoter'; "
            "from offline.cli_common import train_overrides; "
            "got = [train_overrides(p.parse_args([*cmd, '--schedule', 'cosine', '--time-budget', '60'])) "
            "       for cmd in (['train', 'scoter', '--backbone', 'hstu', '--dataset', 'd'], ['train', 'hstu', '--dataset', 'd'])]; "
            "assert got == [{'schedule': 'cosine', 'time_budget_s': 60.0}] * 2, got; "
            "assert 'torch' not in sys.modules, 'torch imported at registration'")
    from scoter.paths import REPO_ROOT

    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    from offline.fusion.cli import ABLATION_NAMES

    assert set(ABLATION_NAMES) == set(ABLATIONS)


def test_run_scoter_end_to_end_writes_comparison(tmp_path) -> None:
    """Benchmark folder on disk -> baseline + SCoTER (history_text stand-in from given item vectors) -> JSON."""
    import json

    import numpy as np

    from offline.backbones.config import HstuConfig, TrainConfig
    from offline.fusion import experiments
    from scoter.h_folder import save_reasoning
    from tests.offline.fusion.stand_in import history_text_reasoning

    ds, _, codes = _tiny_world(n_users=40)
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    (data / "sequences.txt").write_text(
        "".join(f"{u} {' '.join(map(str, s))}\n" for u, s in zip(ds.user_ids, ds.sequences, strict=True)))
    codes.save(tmp_path / "codes.npz")
    vec = np.random.default_rng(0).normal(size=(ds.n_items + 1, 16)).astype(np.float32)
    stand_in = history_text_reasoning(ds, vec, steps=3)
    save_reasoning(tmp_path / "H", stand_in, ds.user_ids)
    cfg = experiments.ScoterRunConfig(
        backbone="hstu", dataset="tiny", data_root=tmp_path / "data", codes_path=tmp_path / "codes.npz",
        reasoning_dir=tmp_path / "H", backbone_config=HstuConfig.small().model_dump(),
        fusion={"heads": 4}, train=TrainConfig(epochs=1, batch_size=64, warmup_steps=0, beam=10, eval_users=0),
        out_dir=tmp_path / "run", device="cpu")
    doc = experiments.run_scoter(cfg)
    assert set(doc["gain_h_present"]) == set(doc["scoter_test"])
    saved = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert saved["metrics"]["backbone_test"] == doc["backbone_test"]
    assert (tmp_path / "run" / "baseline" / "result_subgroups.json").exists()

    # a rerun on the finished folders combines the results without ranking the test set again
    stamp = (tmp_path / "run" / "result.json").stat().st_mtime_ns
    assert experiments.run_scoter(cfg)["scoter_test"] == doc["scoter_test"]
    assert (tmp_path / "run" / "result.json").stat().st_mtime_ns == stamp
    # a run stopped by its time budget would continue training on a plain rerun; combining reuses its result
    from offline.training_utils import load_checkpoint, save_checkpoint

    last = tmp_path / "run" / "last.pt"
    save_checkpoint(last, {**load_checkpoint(last), "finished": False})
    last_stamp = last.stat().st_mtime_ns
    assert experiments.run_scoter(cfg, reuse_final=True)["scoter_test"] == doc["scoter_test"]
    assert last.stat().st_mtime_ns == last_stamp and (tmp_path / "run" / "result.json").stat().st_mtime_ns == stamp

    # `scoter evaluate` on the saved weights reproduces both runs' test numbers
    from offline.pipeline.evaluate import evaluate_generative_checkpoint

    common = {"dataset": "tiny", "codes_path": tmp_path / "codes.npz", "beam": 10, "data_root": tmp_path / "data"}
    fused = evaluate_generative_checkpoint(tmp_path / "run" / "best.pt", reasoning_dir=tmp_path / "H", **common)
    assert fused["scoter"] and fused["test"] == doc["scoter_test"]
    assert fused["test_h_absent"] == doc["scoter_test_h_absent"]
    plain = evaluate_generative_checkpoint(tmp_path / "run" / "baseline" / "best.pt", **common)
    assert not plain["scoter"] and plain["test"] == doc["backbone_test"]
    with pytest.raises(ValueError, match="--reasoning"):
        evaluate_generative_checkpoint(tmp_path / "run" / "best.pt", **common)


def test_history_text_reasoner_matches_array_split_reference() -> None:
    import numpy as np

    from tests.offline.fusion.stand_in import HistoryTextReasoner

    rng = np.random.default_rng(3)
    vec = rng.normal(size=(13, 5)).astype(np.float32)
    vec[0] = 0
    succ = rng.integers(0, 13, size=13)
    fn = HistoryTextReasoner(vec, succ, steps=4)
    hist = np.zeros((30, 8), np.int64)
    for b in range(30):
        n = b % 9  # lengths 0..8, left-padded
        if n:
            hist[b, -n:] = rng.integers(1, 13, size=n)
    out = fn(torch.as_tensor(hist)).numpy()
    for b in range(30):
        h = hist[b][hist[b] > 0]
        for j, chunk in enumerate(np.array_split(h, 3)):
            ref = vec[chunk].mean(0) if len(chunk) else (vec[h].mean(0) if len(h) else np.zeros(5))
            np.testing.assert_allclose(out[b, j], ref, rtol=1e-5, atol=1e-6)
        last = hist[b, -1]
        np.testing.assert_allclose(out[b, 3], vec[succ[last] if succ[last] > 0 else last])


def _world_with_per_prefix_h(tmp_path):
    """30 users, per-user H and a random H for every training prefix (H_train_examples.npy) under tmp_path/H."""
    import numpy as np

    from scoter.h_folder import save_reasoning

    ds, splits, codes = _tiny_world(n_users=30)
    save_reasoning(tmp_path / "H", _planted_reasoning(ds), ds.user_ids)
    per_ex = np.random.default_rng(0).normal(size=(len(splits.train[1]), 3, 16)).astype(np.float32)
    np.save(tmp_path / "H" / "H_train_examples.npy", per_ex)
    return ds, splits, codes, per_ex


def test_per_example_training_h_is_loaded_and_used(tmp_path) -> None:
    import numpy as np

    from offline.backbones.config import HstuConfig, TrainConfig
    from offline.fusion.train import ScoterTrainer
    from scoter.h_folder import load_reasoning

    ds, splits, codes, per_ex = _world_with_per_prefix_h(tmp_path)
    n_ex = len(per_ex)
    arrays = load_reasoning(tmp_path / "H", ds.user_ids)
    assert arrays.train_examples.shape == (n_ex, 3, 16)
    trainer = ScoterTrainer("hstu", splits, codes, tmp_path / "run", TrainConfig(epochs=1, batch_size=64, beam=10,
                            eval_users=0, warmup_steps=0), FusionConfig.small(reasoning_dim=16, d_item=24),
                            arrays, HstuConfig.small().model_dump(), device="cpu")
    np.testing.assert_array_equal(trainer.H_examples.numpy(), per_ex)
    trainer.fit()
    assert trainer.epoch == 1
    np.save(tmp_path / "H" / "H_train_examples.npy", per_ex[:, :2])
    with pytest.raises(ValueError, match="H_train_examples"):
        load_reasoning(tmp_path / "H", ds.user_ids)


def test_all_position_fusion_is_the_per_prefix_fusion_in_one_pass() -> None:
    """Each position fused with the H of the prefix ending there: one pass over a user's sequence gives the mean
    of the per-prefix fused losses, InfoNCE included (without position embeddings, the one thing that differs)."""
    from offline.data.datasets import LeaveOneOut
    from tests.offline.backbones.test_backbones import planted_dataset
    from tests.offline.backbones.test_item_head import item_model

    model = item_model()
    with torch.no_grad():
        model.pos_emb.weight.zero_()
    model.fusion = ReasoningFusion(FusionConfig.small(reasoning_dim=16, d_item=24, absent_rate=0.0, dropout=0.0))
    model.eval()
    loo = LeaveOneOut(planted_dataset(12), max_len=8)
    inputs, targets = (torch.as_tensor(a) for a in loo.train_sequence_examples())
    rows = torch.as_tensor(loo.train_sequence_prefix_rows())
    hist, tgt = (torch.as_tensor(a) for a in loo.train_examples())
    H = torch.randn(len(tgt), 3, 16, generator=torch.Generator().manual_seed(0))
    seq_loss, seq_parts = model.sequence_loss(inputs, targets, H[rows.clamp(min=0)], rows >= 0)
    prefix_loss, prefix_parts = model.loss(hist, tgt, H, torch.ones(len(tgt), dtype=torch.bool))
    torch.testing.assert_close(seq_loss, prefix_loss, rtol=1e-4, atol=1e-5)
    assert seq_parts["aux"] == pytest.approx(prefix_parts["aux"], rel=1e-4)
    # the H does reach the loss: another H at one position changes it
    H2 = H.clone()
    H2[int(rows[0, -1])] += 1.0
    assert not torch.allclose(model.sequence_loss(inputs, targets, H2[rows.clamp(min=0)], rows >= 0)[0], seq_loss)


def test_scoter_trainer_trains_all_positions_with_each_prefix_h(tmp_path) -> None:

    from offline.backbones.config import HstuConfig, TrainConfig
    from offline.fusion.train import ScoterTrainer
    from scoter.h_folder import load_reasoning

    ds, splits, codes, _ = _world_with_per_prefix_h(tmp_path)
    cfg = TrainConfig(epochs=1, batch_size=8, beam=10, eval_users=0, warmup_steps=0)
    trainer = ScoterTrainer("hstu", splits, codes, tmp_path / "run", cfg, FusionConfig.small(reasoning_dim=16,
                            d_item=24), load_reasoning(tmp_path / "H", ds.user_ids),
                            HstuConfig.small(head="item").model_dump(), device="cpu")
    inputs, targets = trainer.training_arrays()
    assert trainer.per_position and len(inputs) == len(ds.user_ids)  # one row per user, not one per prefix
    rows = trainer.prefix_rows.numpy()
    assert (splits.train[1][rows[rows >= 0]] == targets[targets > 0]).all()  # each position: its own prefix
    seen: list[torch.Tensor] = []
    forward = trainer.model.fusion.forward
    trainer.model.fusion.forward = lambda h, m, H, p: (seen.append(H), forward(h, m, H, p))[1]  # observe, no fake
    trainer.fit()
    per_position = [H for H in seen if H.dim() == 4]  # training batches; validation passes one H per user
    assert trainer.epoch == 1 and len(per_position) == -(-len(inputs) // 8)
    assert all(H.shape[1] == inputs.shape[1] for H in per_position)


# -- the recommendation step's vote ----------------------------------------------------------------------------
def _voting_fusion(n_items: int = 23, D: int = 16, d_item: int = 24, weight: float = 2.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(n_items, D, generator=g)
    fusion = ReasoningFusion(FusionConfig.small(reasoning_dim=D, d_item=d_item, vote_items=n_items + 1))
    fusion.set_item_text(table)
    fusion.vote_weight.fill_(weight)
    return fusion, table


def test_vote_is_the_weighted_cosine_of_the_last_step_and_zero_without_h() -> None:
    fusion, table = _voting_fusion()
    H = torch.randn(3, 4, 16)
    H[1] = float("nan")  # an absent row's garbage never leaks
    present = torch.tensor([True, False, True])
    vote = fusion.vote(H, present)
    want = 2.0 * torch.nn.functional.normalize(H[:, -1], dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
    torch.testing.assert_close(vote[[0, 2], 1:], want[[0, 2]], atol=2e-3, rtol=2e-3)  # float16 table
    assert (vote[1] == 0).all() and (vote[:, 0] == 0).all()  # absent row; padding column
    fusion.vote_weight.fill_(0.0)
    assert (fusion.vote(H, present) == 0).all()
    with pytest.raises(ValueError, match="item text"):
        fusion.set_item_text(torch.randn(5, 16))
    assert ReasoningFusion(FusionConfig.small()).vote(H, present) is None  # no table, no vote


def test_beam_with_the_vote_equals_exhaustive_scoring_with_it() -> None:
    import numpy as np

    from offline.backbones.beam_search import TrieTensors, constrained_beam_search
    from offline.backbones.sasrec_sid import SasrecSidConfig, SasrecSidModel
    from offline.semantic_ids.codes import SemanticIds

    rng = np.random.default_rng(1)
    raw = np.stack([np.arange(23) // 5, np.arange(23) % 5], 1)
    codes = SemanticIds.from_raw(raw, 5)
    model = SasrecSidModel(SasrecSidConfig.small(), codes.codes, codes.codebook_sizes).eval()
    model.fusion, _ = _voting_fusion(weight=5.0, d_item=model.config.d_model)
    model.fusion.eval()
    history = torch.as_tensor(rng.integers(0, 24, size=(4, 6)))
    H = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(3))
    present = torch.tensor([True, True, False, True])
    trie = TrieTensors.for_model(model)
    with torch.no_grad():
        items, scores = constrained_beam_search(model, history, trie, 30, 23, H, present, exclude_history=False)
        all_items = torch.arange(1, 24).repeat(4, 1)
        ref = model.sequence_log_prob(history, all_items, H, present)
        plain = model.sequence_log_prob(history, all_items)
    order = np.stack([np.lexsort((np.arange(1, 24), -row)) for row in ref.numpy()])
    np.testing.assert_array_equal(items[:, :23].numpy(), order + 1)
    np.testing.assert_allclose(scores[:, :23].numpy(), np.take_along_axis(ref.numpy(), order, 1), rtol=1e-4,
                               atol=1e-4)
    assert not torch.allclose(ref[0], plain[0])  # the vote moved the scores of a row with H ...
    # ... and only through the vote: a row without H keeps its scores up to the fusion (absent = backbone)
    torch.testing.assert_close(ref[2], plain[2])


def test_scoter_trainer_tunes_the_vote_on_validation_and_saves_it(tmp_path) -> None:
    """H's last step is the target's text vector (planted, as in _planted_reasoning), so voting helps: the tuned
    weight is positive, validation Recall@10 at it is the grid's best, and best.pt carries it."""
    from offline.backbones.config import TrainConfig
    from offline.backbones.sasrec_sid import SasrecSidConfig
    from offline.fusion.checkpoint import load_ranking_model
    from offline.fusion.train import ScoterTrainer
    from offline.training_utils import load_checkpoint

    ds, splits, codes = _tiny_world()
    reasoning = _planted_reasoning(ds)
    import numpy as np

    table = np.random.default_rng(1).normal(size=(ds.n_items + 1, 16)).astype(np.float32)[1:]  # = the code
    model_cfg = SasrecSidConfig.small().model_dump()
    fcfg = FusionConfig.small(reasoning_dim=16, d_item=model_cfg["d_model"], heads=4, vote_grid=(0.0, 4.0, 16.0))
    tcfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, warmup_steps=0, beam=10, eval_users=0, patience=5)
    trainer = ScoterTrainer("sasrec-sid", splits, codes, tmp_path, tcfg, fcfg, reasoning, model_cfg, device="cpu",
                            item_text=table)
    trainer.fit()
    state = load_checkpoint(tmp_path / "best.pt")
    grid = state["vote_grid"]
    chosen = float(state["model"]["fusion.vote_weight"])
    assert chosen > 0 and grid[chosen] == max(grid.values()) and grid[chosen] > grid[0.0]
    model = load_ranking_model(tmp_path / "best.pt", codes)
    assert float(model.fusion.vote_weight) == chosen
    assert trainer.tune_vote() == grid  # once per run: a second call reads it back
