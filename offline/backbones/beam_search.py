"""Trie-constrained beam search shared by TIGER and HSTU, written so `torch.onnx.export` can trace it: a fixed
Python loop over the L code positions, tensor ops only (gather, masked_fill, topk), no host syncs, no branches
on data. Every returned item is a real catalogue item; missing beams are padded with item 0 and score -inf."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from offline.backbones.base import GenerativeBackbone
from offline.backbones.item_head import item_aware_beam_search
from offline.backbones.layers import BOS

NEG_INF = float("-inf")


class TrieLike(Protocol):
    """What offline.semantic_ids.trie.PrefixTrie provides: next_node[l] [n_nodes_l, V_l] (-1 = absent), leaf_item [n_leaves]."""

    next_node: list[np.ndarray]
    leaf_item: np.ndarray


def build_trie(codes_body: np.ndarray, codebook_sizes: list[int]) -> TrieLike:
    """Trie over item code tuples (row j = item j+1), i.e. offline.semantic_ids.trie.PrefixTrie."""
    from offline.semantic_ids.trie import PrefixTrie

    return PrefixTrie.from_codes(np.asarray(codes_body), list(codebook_sizes))


class TrieTensors(nn.Module):
    """The trie as buffers (so it moves with .to(device) and is embedded as constants in an ONNX graph)."""

    def __init__(self, next_node: list[np.ndarray | torch.Tensor], leaf_item: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        self.levels = len(next_node)
        for pos, table in enumerate(next_node):
            self.register_buffer(f"next_node_{pos}", torch.as_tensor(np.asarray(table), dtype=torch.long))
        self.register_buffer("leaf_item", torch.as_tensor(np.asarray(leaf_item), dtype=torch.long))

    @classmethod
    def from_trie(cls, trie: TrieLike) -> TrieTensors:
        return cls(list(trie.next_node), trie.leaf_item)

    @classmethod
    def from_codes(cls, codes_body: np.ndarray, codebook_sizes: list[int]) -> TrieTensors:
        return cls.from_trie(build_trie(codes_body, codebook_sizes))

    @classmethod
    def for_model(cls, model: GenerativeBackbone) -> TrieTensors:
        return cls.from_codes(model.codes[1:].cpu().numpy(), model.codebook_sizes)

    def table(self, pos: int) -> torch.Tensor:
        return getattr(self, f"next_node_{pos}")


def constrained_beam_search(
    model: GenerativeBackbone,
    history: torch.Tensor,
    trie: TrieTensors,
    beam: int = 20,
    topk: int | None = None,
    reasoning: torch.Tensor | None = None,
    present: torch.Tensor | None = None,
    constrain: bool = True,
    exclude_history: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``topk`` (<= beam) items per user by summed log-probability of their code tuple.

    history [B,T] -> (items [B,topk] int64, scores [B,topk] float32), best first, ties broken by lower item
    index. The encoder runs once per user; the decoder steps with cached keys/values over B*beam rows.
    ``exclude_history`` (default) never returns an item of the given history: on catalogues without repeat
    purchases the models' top item is otherwise mostly the newest history item (BENCHMARKS.md). The item-aware
    head masks them before the beam (no beam is spent on them); the code decoder drops them from its results.
    ``constrain=False`` drops the trie mask (only to measure its cost; items are then 0)."""
    topk = beam if topk is None else topk
    if not 0 < topk <= beam:
        raise ValueError(f"topk: must be in 1..beam={beam}, got {topk}")
    if trie.levels != model.code_length:
        raise ValueError(f"trie: {trie.levels} levels for code length {model.code_length}")
    if model.head is not None:
        items, scores = item_aware_beam_search(model, history, trie, beam, topk, reasoning, present,
                                               exclude=history if exclude_history else None)
        items, scores = _order_by_score_then_item(items, scores)
        return items[:, :topk], scores[:, :topk]
    mem, mask = model.memory(history, reasoning, present)
    B = mem.shape[0]
    dec = model.decoder
    device = mem.device
    # The first step decodes one row per user (every beam would hold the same BOS prefix): 1/beam of that step's
    # decoder work; the top-k then fans out to `beam` rows. When the first level has fewer codes than beams, all
    # beams start at once with beams 1.. at -inf, so the first top-k still picks distinct codes.
    width = 1 if dec.codebook_sizes[0] >= beam else beam
    state = dec.init_state(mem, mask, width)
    token = torch.full((B * width,), BOS, dtype=torch.long, device=device)
    scores: torch.Tensor | None = None  # the first step's log-probs are the scores
    if width > 1:
        scores = torch.zeros(B, width, device=device)
        scores = torch.cat([scores[:, :1], torch.full_like(scores[:, 1:], NEG_INF)], dim=1)
    node = torch.zeros(B, width, dtype=torch.long, device=device)
    for pos in range(model.code_length):
        logp, state = dec.step(token, pos, state)
        V = dec.codebook_sizes[pos]
        logp = logp.view(B, width, V)
        if constrain:
            child = trie.table(pos)[node]  # [B, width, V], -1 where the prefix does not exist
            logp = logp.masked_fill(child < 0, NEG_INF)
        cand = (logp if scores is None else scores.unsqueeze(-1) + logp).reshape(B, width * V)
        scores, idx = torch.topk(cand, beam, dim=1)
        parent = torch.div(idx, V, rounding_mode="floor")
        code = idx - parent * V
        if constrain:
            node = child.reshape(B, width * V).gather(1, idx).clamp(min=0)
        row_base = (torch.arange(B, device=device) * width).unsqueeze(1)
        state = dec.reorder(state, (parent + row_base).reshape(-1))
        if width != beam:
            state = dec.widen(state, beam)
            width = beam
        token = code.reshape(-1) + dec.offsets[pos]
    items = trie.leaf_item[node] if constrain else torch.zeros_like(scores, dtype=torch.long)
    if exclude_history and constrain:
        scores = scores.masked_fill(in_history(items, history), NEG_INF)
    items = items.masked_fill(torch.isinf(scores), 0)
    items, scores = _order_by_score_then_item(items, scores)
    return items[:, :topk], scores[:, :topk]


def in_history(items: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """items [B,W], history [B,T] (0 = padding) -> [B,W] True where a real item occurs in its row's history."""
    return ((items[:, :, None] == history[:, None, :]) & (history[:, None, :] > 0)).any(dim=2)


def _order_by_score_then_item(items: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (score desc, item asc, slot asc) with pairwise comparisons + scatter: deterministic in
    torch and ONNX Runtime alike (no reliance on how a sort kernel orders ties; stable sort does not export)."""
    W = items.shape[1]
    slot = torch.arange(W, device=items.device)
    s_i, s_j = scores.unsqueeze(2), scores.unsqueeze(1)
    i_i, i_j = items.unsqueeze(2), items.unsqueeze(1)
    before = (s_j > s_i) | ((s_j == s_i) & ((i_j < i_i) | ((i_j == i_i) & (slot[None, None, :] < slot[None, :, None]))))
    rank = before.long().sum(dim=2)  # [B, W], a permutation of 0..W-1 per row
    return torch.zeros_like(items).scatter(1, rank, items), torch.zeros_like(scores).scatter(1, rank, scores)


class RankingModule(nn.Module):
    """The whole ranking path as one module for ONNX export (Contract 1): forward(history, history_mask,
    reasoning, reasoning_present) -> (item_ids [B,beam] int64, scores [B,beam] float32)."""

    def __init__(self, model: GenerativeBackbone, trie: TrieTensors | None = None, beam: int = 20,
                 exclude_history: bool = True) -> None:
        super().__init__()
        self.model = model
        self.trie = trie if trie is not None else TrieTensors.for_model(model)
        self.beam = beam
        self.exclude_history = exclude_history

    def forward(
        self,
        history: torch.Tensor,
        history_mask: torch.Tensor,
        reasoning: torch.Tensor,
        reasoning_present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        history = history.masked_fill(~history_mask.to(torch.bool), 0)
        use_reasoning = self.model.fusion is not None
        return constrained_beam_search(
            self.model,
            history,
            self.trie,
            beam=self.beam,
            reasoning=reasoning if use_reasoning else None,
            present=reasoning_present.to(torch.bool) if use_reasoning else None,
            exclude_history=self.exclude_history,
        )


@torch.no_grad()
def recommend(
    model: GenerativeBackbone,
    histories: np.ndarray | torch.Tensor,
    k: int,
    trie: TrieTensors,
    beam: int = 20,
    batch_size: int = 256,
    reasoning: np.ndarray | torch.Tensor | None = None,
    present: np.ndarray | torch.Tensor | None = None,
    progress: bool = False,
    exclude_history: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Batched inference over many users: (items [N,k], scores [N,k]) as numpy (the `recommend` contract)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hist = torch.as_tensor(np.asarray(histories), dtype=torch.long)
    out_items, out_scores = [], []
    starts = range(0, hist.shape[0], batch_size)
    for start in tqdm(starts, desc="beam search", unit="batch", disable=not progress):
        sl = slice(start, start + batch_size)
        r = None if reasoning is None else torch.as_tensor(np.asarray(reasoning[sl]), dtype=torch.float32).to(device)
        p = None if present is None else torch.as_tensor(np.asarray(present[sl]), dtype=torch.bool).to(device)
        items, scores = constrained_beam_search(model, hist[sl].to(device), trie, beam, k, r, p,
                                                exclude_history=exclude_history)
        out_items.append(items.cpu().numpy())
        out_scores.append(scores.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out_items), np.concatenate(out_scores)
