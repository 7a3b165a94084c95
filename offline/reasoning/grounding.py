"""Facts the teacher is grounded in, computed from training interactions only.

Every statistic here (item co-occurrence, popularity) is counted over each user's training part seq[:-2], so
neither a validation target (seq[-2]) nor a test target (seq[-1]) can enter a prompt, a candidate list or H.
A user's facts are then read off a history: its items' short titles, brands and leaf categories, its category
and brand transitions, and "bought together" candidates (items that followed the history's items in other
users' training sequences), each with its catalogue id so a recommendation maps to a real item exactly."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class GroundingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: int = Field(3, ge=1, description="items up to this many positions later count as bought together")
    recency_decay: float = Field(0.6, gt=0, le=1, description="weight of the j-th most recent history item")
    candidates: int = Field(20, ge=1, le=50, description="candidates shown in the prompt")
    history_items: int = Field(5, ge=1, description="most recent history items shown")
    title_words: int = Field(6, ge=2, description="history titles are cut to this many words (prompt length)")
    candidate_words: int = Field(4, ge=2, description="candidate titles are cut to this many words")


def short_title(title: str, words: int) -> str:
    t = re.sub(r"\s*[,(\[].*$", "", title or "").strip() or (title or "").strip()  # drop size/pack suffixes
    parts = t.split()
    return " ".join(parts[:words]) if parts else "untitled"


def real_brand(brand: str | None) -> bool:
    """The catalogue names unknown brands 'brand_<n>'; those say nothing to a reader."""
    return bool(brand) and not re.fullmatch(r"brand_\d+", brand or "")


@dataclass
class Facts:
    history: list[int]
    candidates: list[int]  # 1-based catalogue indices, best first
    candidate_scores: list[float]


class Grounding:
    """Co-occurrence and popularity over training parts; `facts(history)` for one user."""

    def __init__(self, dataset: Any, config: GroundingConfig | None = None) -> None:
        from scipy import sparse

        self.ds = dataset
        self.cfg = config or GroundingConfig()
        n = dataset.n_items + 1
        rows, cols, vals = [], [], []
        pop = np.zeros(n, np.float64)
        for seq in dataset.sequences:
            train = np.asarray(seq[:-2], np.int64)  # training part only: no validation/test target
            np.add.at(pop, train, 1.0)
            for gap in range(1, self.cfg.window + 1):
                if len(train) > gap:
                    rows.append(train[:-gap])
                    cols.append(train[gap:])
                    vals.append(np.full(len(train) - gap, 1.0 / gap))
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        v = np.concatenate(vals) if vals else np.zeros(0)
        self.after = sparse.csr_matrix((v, (r, c)), shape=(n, n))  # i bought, then j within `window`
        self.together = (self.after + self.after.T).tocsr()
        self.popularity = pop

    def candidates(self, history: Sequence[int], n: int | None = None) -> tuple[list[int], list[float]]:
        """Top-n items by recency-weighted co-occurrence with the history (history items excluded), filled
        with the most popular training items when co-occurrence runs out; only items seen in a training part
        (so fewer than n in a tiny catalogue)."""
        n = n or self.cfg.candidates
        hist = [int(i) for i in history]
        score = np.zeros(self.ds.n_items + 1, np.float64)
        for j, item in enumerate(reversed(hist[-10:])):
            w = self.cfg.recency_decay ** j
            row = self.after.getrow(item)
            score[row.indices] += w * row.data * 2.0  # what followed an item counts double
            row = self.together.getrow(item)
            score[row.indices] += w * row.data
        score[0] = 0
        score[hist] = 0
        score += 1e-6 * self.popularity / max(self.popularity.max(), 1.0)  # ties and fill: popularity
        score[0] = -1
        score[hist] = -1
        score[self.popularity == 0] = -1  # never seen in a training part: no evidence, never a candidate
        n = min(n, int((score >= 0).sum()))
        top = np.argpartition(-score, n)[:n] if n < len(score) else np.arange(len(score))
        top = top[np.argsort(-score[top], kind="stable")][:n]
        return top.tolist(), score[top].tolist()

    def facts(self, history: Sequence[int]) -> Facts:
        cands, scores = self.candidates(history)
        return Facts(history=[int(i) for i in history], candidates=cands, candidate_scores=scores)

    # ---- rendering -------------------------------------------------------------------------------------
    def item_line(self, i: int, words: int | None = None) -> str:
        it = self.ds.items[i - 1]
        parts = [short_title(it.title, words or self.cfg.title_words)]
        if real_brand(it.brand):
            parts.append(it.brand)
        if it.categories:
            parts.append(it.categories[-1])
        return " | ".join(parts)

    def render_history(self, history: Sequence[int]) -> str:
        recent = list(history)[-self.cfg.history_items:]
        return "\n".join(f"- {self.item_line(int(i))}" for i in recent)

    def render_profile(self, history: Sequence[int]) -> str:
        """One line: the category path of the recent items and the most bought brands."""
        items = [self.ds.items[int(i) - 1] for i in history]
        brands = Counter(it.brand for it in items if real_brand(it.brand))
        recent = [it.categories[-1] for it in items[-self.cfg.history_items:] if it.categories]
        path = [c for k, c in enumerate(recent) if k == 0 or c != recent[k - 1]]
        parts = []
        if path:
            parts.append("categories " + " -> ".join(path[-4:]))
        if brands:
            parts.append("brands " + ", ".join(f"{b} x{k}" for b, k in brands.most_common(2)))
        return "; ".join(parts)

    def render_candidates(self, candidates: Sequence[int]) -> str:
        """Numbered list; the number is what the model writes, `id` the catalogue id it maps to exactly."""
        ext = self.ds.items
        lines = []
        for k, i in enumerate(candidates, 1):
            it = ext[int(i) - 1]
            cat = f" | {it.categories[-1]}" if it.categories else ""
            lines.append(f"{k}. (#{it.item_id}) {short_title(it.title, self.cfg.candidate_words)}{cat}")
        return "\n".join(lines)
