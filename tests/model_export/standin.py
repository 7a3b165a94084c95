"""A small stand-in ranking model for the exporter's tests.

Why: the exporter must be testable on its own, with a model small enough to train in a second. It follows
Contract 1 exactly (same forward signature and outputs as `offline.backbones.RankingModule`) and the same
constrained beam search pattern: encode -> per-step logits -> trie mask gathered from `next_node` -> topk.
It is a real, trained torch model (not a mock); only its architecture is simpler than TIGER/HSTU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NEG = -1.0e9


def build_trie(codes: np.ndarray, codebook_sizes: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Prefix trie over code tuples (codes[i] = tuple of item i+1), in the Contract's array layout."""
    levels = codes.shape[1]
    prefix_ids: list[dict[tuple[int, ...], int]] = [{(): 0}]
    for depth in range(1, levels + 1):
        ids: dict[tuple[int, ...], int] = {}
        for row in codes:
            ids.setdefault(tuple(int(c) for c in row[:depth]), len(ids))
        prefix_ids.append(ids)
    next_node = []
    for level in range(levels):
        table = np.full((len(prefix_ids[level]), codebook_sizes[level]), -1, dtype=np.int64)
        for prefix, child in prefix_ids[level + 1].items():
            table[prefix_ids[level][prefix[:-1]], prefix[-1]] = child
        next_node.append(table)
    leaf_item = np.zeros(len(prefix_ids[levels]), dtype=np.int64)
    for item, row in enumerate(codes, start=1):
        leaf_item[prefix_ids[levels][tuple(int(c) for c in row)]] = item
    return next_node, leaf_item


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


class StandInRanker(nn.Module):
    """Mean-pooled history + gated reasoning adapter, then an L-step trie-constrained beam search."""

    def __init__(self, codes: np.ndarray, codebook_sizes: list[int], k: int, d_reasoning: int,
                 d_item: int = 32, beam: int = 20) -> None:
        super().__init__()
        self.n_items = codes.shape[0] - 1
        self.beam = beam
        self.d_item = d_item
        self.item_emb = nn.Embedding(self.n_items + 1, d_item, padding_idx=0)
        self.adapter = nn.Linear(d_reasoning, d_item)
        self.code_emb = nn.ModuleList(nn.Embedding(v, d_item) for v in codebook_sizes)
        self.heads = nn.ModuleList(nn.Linear(d_item, v) for v in codebook_sizes)
        next_node, leaf_item = build_trie(codes[1:], codebook_sizes)
        self.levels = len(next_node)
        for level, table in enumerate(next_node):
            self.register_buffer(f"next_node_{level}", torch.from_numpy(table))
        self.register_buffer("leaf_item", torch.from_numpy(leaf_item))
        self.register_buffer("codes", torch.from_numpy(codes))

    def encode(self, history, history_mask, reasoning, reasoning_present) -> torch.Tensor:
        m = history_mask.to(torch.float32).unsqueeze(-1)
        h = (self.item_emb(history) * m).sum(1) / m.sum(1).clamp(min=1.0)
        r = self.adapter(reasoning).mean(1) * reasoning_present.to(torch.float32).unsqueeze(-1)
        return torch.tanh(h + r)

    def teacher_forcing_loss(self, history, history_mask, reasoning, present, target) -> torch.Tensor:
        """Cross-entropy of the target item's code tuple, one term per level."""
        state = self.encode(history, history_mask, reasoning, present)
        tuple_ = self.codes[target]
        loss = torch.zeros(())
        for level in range(self.levels):
            loss = loss + nn.functional.cross_entropy(self.heads[level](state), tuple_[:, level])
            state = state + self.code_emb[level](tuple_[:, level])
        return loss

    def forward(self, history, history_mask, reasoning, reasoning_present):
        batch = history.shape[0]
        width = self.beam
        state = self.encode(history, history_mask, reasoning, reasoning_present)
        state = state.unsqueeze(1).expand(batch, width, self.d_item)
        node = torch.zeros(batch, width, dtype=torch.int64, device=history.device)
        score = torch.full((batch, width), NEG, device=history.device)
        score[:, 0] = 0.0
        for level in range(self.levels):
            table = getattr(self, f"next_node_{level}")
            vocab = table.shape[1]
            child = table[node]  # [B, W, V]
            invalid = child < 0
            logp = torch.log_softmax(self.heads[level](state).masked_fill(invalid, NEG), dim=-1)
            total = (score.unsqueeze(-1) + logp).masked_fill(invalid, NEG)
            score, idx = total.reshape(batch, width * vocab).topk(width, dim=1)
            beam_idx = torch.div(idx, vocab, rounding_mode="floor")
            token = idx - beam_idx * vocab
            node = child.reshape(batch, width * vocab).gather(1, idx).clamp(min=0)
            state = state.gather(1, beam_idx.unsqueeze(-1).expand(batch, width, self.d_item))
            state = state + self.code_emb[level](token)
        items = self.leaf_item[node]
        items = torch.where(score > NEG / 2, items, torch.zeros_like(items))
        return items, score


def train_standin(n_items: int = 300, codebook_sizes: tuple[int, ...] = (8, 8, 8, 2), k: int = 3,
                  d_reasoning: int = 16, beam: int = 20, steps: int = 30, seed: int = 0):
    """Train a stand-in a few steps on synthetic next-item data; returns (model, codes, data dict)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sizes = list(codebook_sizes)
    codes = synthetic_codes(n_items, sizes, seed)
    model = StandInRanker(codes, sizes, k, d_reasoning, beam=beam)
    n_users, max_len = 64, 10
    lengths = rng.integers(2, max_len + 1, size=n_users)
    history = np.zeros((n_users, max_len), dtype=np.int64)
    for u, n in enumerate(lengths):  # left-padded, newest last; items drift upward so there is signal
        start = rng.integers(1, n_items - max_len)
        history[u, max_len - n:] = np.arange(start, start + n)
    mask = history > 0
    target = history[:, -1] + 1
    reasoning = rng.standard_normal((n_users, k, d_reasoning)).astype(np.float32)
    present = rng.random(n_users) < 0.7
    tensors = [torch.from_numpy(a) for a in (history, mask, reasoning, present, target)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = model.teacher_forcing_loss(*tensors)
        loss.backward()
        opt.step()
    model.eval()
    data = {"history": history, "history_mask": mask, "reasoning": reasoning, "reasoning_present": present}
    return model, codes, data
