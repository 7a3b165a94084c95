"""A tiny real model for the exporter's tests: the backbones' TIGER (or HSTU) + the fusion module, behind
`offline.backbones.RankingModule`, trained a few steps on synthetic sequences. Small enough to train in about a
second; exported with the same code path as a full-size model."""

from __future__ import annotations

import numpy as np
import torch

from model_export.export import RankingSource


def synthetic_codes(n_items: int, codebook_sizes: list[int], seed: int = 0) -> np.ndarray:
    """Unique random code tuples for items 1..n_items (row 0 = padding), shape [n_items + 1, L]."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    rows = [np.zeros(len(codebook_sizes), dtype=np.int64)]
    while len(rows) <= n_items:
        row = tuple(int(rng.integers(0, v)) for v in codebook_sizes)
        if row not in seen:
            seen.add(row)
            rows.append(np.array(row, dtype=np.int64))
    return np.stack(rows)


def synthetic_users(n_users: int, n_items: int, max_len: int, k: int, d: int, seed: int = 0) -> dict:
    """Left-padded histories of consecutive item runs (a learnable pattern), targets, reasoning, presence."""
    rng = np.random.default_rng(seed)
    history = np.zeros((n_users, max_len), dtype=np.int64)
    lengths = rng.integers(1, max_len + 1, size=n_users)
    for u, n in enumerate(lengths):
        start = rng.integers(1, n_items - max_len)
        history[u, max_len - n :] = np.arange(start, start + n)
    return {
        "history": history,
        "history_mask": history > 0,
        "reasoning": rng.standard_normal((n_users, k, d)).astype(np.float32),
        "reasoning_present": rng.random(n_users) < 0.7,
        "target": history[:, -1] + 1,
    }


def train_tiny(backbone: str = "tiger", n_items: int = 300, codebook_sizes: tuple[int, ...] = (8, 8, 8, 2),
               k: int = 3, d: int = 16, beam: int = 20, steps: int = 20, seed: int = 0,
               vote_weight: float = 0.0) -> tuple[RankingSource, dict]:
    """``vote_weight`` > 0: the fusion also carries the recommendation step's vote over random item texts."""
    from offline.backbones import HstuConfig, HstuModel, RankingModule, TigerConfig, TigerModel, TrieTensors
    from offline.fusion.model import FusionConfig, ReasoningFusion
    from offline.semantic_ids.trie import PrefixTrie

    torch.manual_seed(seed)
    sizes = list(codebook_sizes)
    codes = synthetic_codes(n_items, sizes, seed)
    if backbone == "tiger":
        model = TigerModel(TigerConfig.small(), codes, sizes)
    elif backbone == "hstu-item":  # the item-aware head (prefix heads + item-tied leaf)
        model = HstuModel(HstuConfig.small(head="item"), codes, sizes)
    elif backbone == "sasrec-sid":
        from offline.backbones.sasrec_sid import SasrecSidConfig, SasrecSidModel

        model = SasrecSidModel(SasrecSidConfig.small(), codes, sizes)
    else:
        model = HstuModel(HstuConfig.small(), codes, sizes)
    d_item = model.config.d_model
    vote_items = n_items + 1 if vote_weight else 0
    model.fusion = ReasoningFusion(FusionConfig(reasoning_dim=d, d_item=d_item, heads=2, max_steps=k, dropout=0.0,
                                                vote_items=vote_items))
    if vote_weight:
        model.fusion.set_item_text(torch.randn(n_items, d))
        model.fusion.vote_weight.fill_(vote_weight)
    data = synthetic_users(64, n_items, model.config.max_len, k, d, seed)
    tensors = [torch.from_numpy(data[key]) for key in ("history", "target", "reasoning", "reasoning_present")]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = model.loss(*tensors)
        loss.backward()
        opt.step()
    model.eval()
    trie = PrefixTrie.from_codes(codes[1:], sizes)
    module = RankingModule(model, TrieTensors.from_trie(trie), beam=beam).eval()
    src = RankingSource(
        module=module, backbone=backbone, codes=codes, codebook_sizes=sizes,
        item_ids=[f"ext-{i}" for i in range(1, n_items + 1)], next_node=list(trie.next_node),
        leaf_item=trie.leaf_item, reasoning_steps=k, reasoning_dim=d, d_item=d_item,
        max_history=model.config.max_len, beam=beam, provenance={"trained": f"{steps} steps on synthetic data"},
    )
    return src, data
