"""Test fixture: a development stand-in for the student's H, computed from a history alone, so fusion training,
evaluation and export can be tested without running the reasoning stage. It never ships: `scoter train scoter`
requires a real H folder."""

from __future__ import annotations

import numpy as np
import torch

from offline.data.datasets import Dataset, LeaveOneOut
from scoter.h_folder import SPLITS, ReasoningArrays


def next_item_table(train_sequences: list[np.ndarray], n_items: int) -> np.ndarray:
    """Most frequent successor of each item in the training parts only ([n_items + 1], 0 = none seen; ties go
    to the lower item index)."""
    pairs = (
        np.concatenate([np.stack([s[:-1], s[1:]], 1) for s in train_sequences if len(s) > 1])
        if any(len(s) > 1 for s in train_sequences)
        else np.zeros((0, 2), np.int64)
    )
    table = np.zeros(n_items + 1, np.int64)
    if len(pairs) == 0:
        return table
    keys, counts = np.unique(pairs, axis=0, return_counts=True)
    # sort by (prev asc, count desc, next asc) and keep the first row of each prev
    order = np.lexsort((keys[:, 1], -counts, keys[:, 0]))
    keys = keys[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:, 0] != keys[:-1, 0]
    table[keys[first, 0]] = keys[first, 1]
    return table


class HistoryTextReasoner:
    """Stand-in for the student's H, computed from a history alone (so it is leak-free for every
    training prefix, unlike a per-user H): steps 1..K-1 are mean item-text vectors of the history in K-1
    time-ordered chunks (oldest first, ``np.array_split`` sizes), step K is the text vector of the most frequent
    successor, in the training parts only, of the newest history item (the item itself if it has none)."""

    def __init__(self, item_vectors: np.ndarray, successor: np.ndarray, steps: int = 4) -> None:
        if steps < 2:
            raise ValueError(f"steps: need >= 2 (history chunks + successor step), got {steps}")
        if successor.shape[0] != item_vectors.shape[0]:
            raise ValueError(f"successor: {successor.shape[0]} rows for {item_vectors.shape[0]} item vectors")
        self.vec = torch.as_tensor(np.asarray(item_vectors, np.float32))
        self.succ = torch.as_tensor(np.asarray(successor, np.int64))
        self.steps = steps

    def to(self, device: torch.device | str) -> HistoryTextReasoner:
        self.vec, self.succ = self.vec.to(device), self.succ.to(device)
        return self

    @torch.no_grad()
    def __call__(self, hist: torch.Tensor) -> torch.Tensor:
        """hist [B,T] left-padded item ids -> H [B,K,D]."""
        B, T = hist.shape
        m = self.steps - 1
        valid = hist > 0
        n = valid.sum(1)
        i = torch.arange(T, device=hist.device)[None] - (T - n)[:, None]  # index among real items
        q, r = n // m, n % m
        big = (r * (q + 1))[:, None]
        chunk = torch.where(i < big, i // (q + 1)[:, None], r[:, None] + (i - big) // q.clamp(min=1)[:, None])
        chunk = torch.where(valid, chunk, torch.full_like(chunk, m))
        onehot = torch.nn.functional.one_hot(chunk, m + 1)[..., :m].float()  # [B,T,m]
        v = self.vec[hist]
        counts = onehot.sum(1)
        mean_all = (v * valid[..., None]).sum(1) / n.clamp(min=1)[:, None]
        chunks = torch.where(
            counts[..., None] > 0,
            onehot.transpose(1, 2) @ v / counts.clamp(min=1)[..., None],
            mean_all[:, None],
        )
        last = hist[:, -1]
        nxt = self.succ[last]
        return torch.cat([chunks, self.vec[torch.where(nxt > 0, nxt, last)][:, None]], dim=1)


def history_text_reasoning(
    dataset: Dataset, item_vectors: np.ndarray, steps: int = 4, max_len: int = 20
) -> ReasoningArrays:
    """Arrays of the history_text stand-in for every split (train/valid: seq[:-2], test: seq[:-1], the reasoning
    pipeline's inputs) plus ``train_fn`` so training prefixes get H from their own prefix."""
    if item_vectors.shape[0] != dataset.n_items + 1:
        raise ValueError(
            f"item_vectors: expected {dataset.n_items + 1} rows (row 0 = pad), got {item_vectors.shape[0]}"
        )
    loo = LeaveOneOut(dataset, max_len=max_len)
    fn = HistoryTextReasoner(item_vectors, next_item_table(loo.train_sequences(), dataset.n_items), steps)
    H: dict[str, np.ndarray] = {}
    for split in ("valid", "test"):
        hist = torch.as_tensor(loo.eval_examples(split)[0])
        H[split] = torch.cat([fn(hist[i : i + 4096]) for i in range(0, len(hist), 4096)]).numpy()
    H["train"] = H["valid"]  # same input (seq[:-2]); used only if train_fn is dropped
    present = {s: np.ones(dataset.n_users, bool) for s in SPLITS}
    return ReasoningArrays(H, present, f"history_text(K={steps}, training-only signal; NOT student H)", fn)
