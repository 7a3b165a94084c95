"""What TIGER and HSTU share: the code table, the fusion hook, teacher-forced loss and the decoder interface
used by the constrained beam search (docs/CONTRACTS.md, offline/backbones)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline.backbones.layers import CodeDecoder


def check_codes(codes: np.ndarray | torch.Tensor, codebook_sizes: list[int]) -> torch.Tensor:
    """Validate a SemanticIds code table [n_items+1, L] (row 0 = pad) and return it as int64."""
    codes_t = torch.as_tensor(np.asarray(codes), dtype=torch.long)
    if codes_t.dim() != 2 or codes_t.shape[0] < 2:
        raise ValueError(f"codes: expected [n_items + 1, L], got {list(codes_t.shape)}")
    if codes_t.shape[1] != len(codebook_sizes):
        raise ValueError(f"codebook_sizes: {len(codebook_sizes)} sizes for code length {codes_t.shape[1]}")
    sizes = torch.tensor(codebook_sizes)
    body = codes_t[1:]
    if bool((body < 0).any()) or bool((body >= sizes).any()):
        raise ValueError("codes: a code is negative or not below its position's codebook size")
    return codes_t


class GenerativeBackbone(nn.Module):
    """Encoder (subclass) + fusion hook + semantic-ID decoder. Item ids are 1-based, 0 = padding."""

    decoder: CodeDecoder

    def __init__(self, codes: np.ndarray | torch.Tensor, codebook_sizes: list[int]) -> None:
        super().__init__()
        self.register_buffer("codes", check_codes(codes, codebook_sizes), persistent=True)
        self.codebook_sizes = list(codebook_sizes)
        self.fusion: nn.Module | None = None
        self.head: nn.Module | None = None  # an ItemAwareHead replaces the decoder (offline/backbones/item_head.py)

    @property
    def all_positions(self) -> bool:
        """Whether training uses one sequence per user with a loss at every position (the item-aware head)."""
        return self.head is not None

    def item_table(self) -> torch.Tensor:
        """Every item's input embedding [n_items+1, d] (row 0 = padding): the tied leaf of the item-aware head."""
        return self.item_embedding(torch.arange(self.n_items + 1, device=self.codes.device))

    def sequence_loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        reasoning: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """All-position loss: inputs [B,T] (left-padded), targets [B,T] (the next item at each position, 0 = no
        loss); one encoder pass, the item-aware head's loss at every real position. With a fusion module,
        ``reasoning`` [B,T,K,D] is each position's own H (from the prefix ending there, so it never saw that
        position's target) and ``present`` [B,T] says where one exists."""
        if self.head is None:
            raise ValueError("sequence_loss needs the item-aware head (config head='item')")
        if reasoning is not None and present is None:
            present = targets > 0
        mem, _ = self.memory(inputs, reasoning, present)
        real = targets > 0
        total, parts = self.head.loss(mem[real], targets[real], self.item_table())
        if reasoning is None:
            return total, parts
        return self._with_aux(total, parts, targets[real], reasoning[real], present[real])

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0]) - 1

    @property
    def code_length(self) -> int:
        return len(self.codebook_sizes)

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B,T] item ids (left-padded with 0) -> (h_seq [B,T',d], mask [B,T'] True at real tokens)."""
        raise NotImplementedError

    def item_embedding(self, items: torch.Tensor) -> torch.Tensor:
        """A d_item-wide vector per item, the InfoNCE target of the fusion module."""
        raise NotImplementedError

    def memory(
        self,
        history: torch.Tensor,
        reasoning: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output after the optional fusion hook; the mask always keeps the newest slot so a user with
        an empty history still attends to something (no NaN from an all-masked softmax)."""
        h_seq, mask = self.encode(history)
        if self.fusion is not None and reasoning is not None:
            if present is None:
                present = torch.ones(h_seq.shape[0], dtype=torch.bool, device=h_seq.device)
            h_seq = self.fusion(h_seq, mask, reasoning, present)
        last = torch.zeros_like(mask)
        last[:, -1] = True
        return h_seq, mask | last

    def decode_logits(self, mem: torch.Tensor, mask: torch.Tensor, target_codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher forcing: logits per code position, each [B, V_l]."""
        return self.decoder(mem, mask, target_codes)

    def sequence_log_prob(
        self,
        history: torch.Tensor,
        items: torch.Tensor,
        reasoning: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-likelihood of each candidate item's full code tuple (the item-aware head: the score its beam ranks
        by): history [B,T], items [B,C] -> [B,C]. Exhaustive scoring; the reference the beam search is tested
        against."""
        mem, mask = self.memory(history, reasoning, present)
        if self.head is not None:
            scores = self.head.item_scores(mem[:, -1], self.item_table())
            vote = self.reasoning_vote(reasoning, present)
            return (scores if vote is None else scores + vote).gather(1, items)
        B, C = items.shape
        mem = mem.repeat_interleave(C, dim=0)
        mask = mask.repeat_interleave(C, dim=0)
        codes = self.codes[items.reshape(-1)]
        logits = self.decode_logits(mem, mask, codes)
        total = torch.zeros(B * C, device=mem.device)
        for pos, lg in enumerate(logits):
            total = total + torch.log_softmax(lg.float(), -1).gather(1, codes[:, pos : pos + 1]).squeeze(1)
        return total.view(B, C)

    def loss(
        self,
        history: torch.Tensor,
        targets: torch.Tensor,
        reasoning: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The output side's loss at the newest position (teacher-forced code cross-entropy, or the item-aware
        head's), plus the fusion module's weighted contrastive loss when one is attached and H is given."""
        mem, mask = self.memory(history, reasoning, present)
        if self.head is not None:  # the newest position's state, as in every row of all-position training
            total, parts = self.head.loss(mem[:, -1], targets, self.item_table())
        else:
            codes = self.codes[targets]
            logits = self.decode_logits(mem, mask, codes)
            total = sum(F.cross_entropy(lg.float(), codes[:, pos]) for pos, lg in enumerate(logits)) / len(logits)
            parts = {"ce": float(total.detach())}
        return self._with_aux(total, parts, targets, reasoning, present)

    def _with_aux(self, total: torch.Tensor, parts: dict[str, float], targets: torch.Tensor,
                  reasoning: torch.Tensor | None, present: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The recommendation loss plus the fusion's weighted InfoNCE (logged as "aux") when there is one."""
        aux = self.aux_loss(targets, reasoning, present)
        if aux is not None:
            parts["aux"] = float(aux.detach())
            total = total + aux
        return total, parts

    def recommend(
        self, histories: np.ndarray, k: int, beam: int = 20, batch_size: int = 256, exclude_history: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The evaluation harness's `recommend` contract: top-k items by constrained beam search (history items
        excluded unless ``exclude_history`` is False)."""
        from offline.backbones.beam_search import TrieTensors, recommend

        trie = self.__dict__.get("_trie_cache")
        if trie is None or trie.leaf_item.device != self.codes.device:
            trie = TrieTensors.for_model(self).to(self.codes.device)
            self.__dict__["_trie_cache"] = trie  # plain attribute: not a submodule, not in state_dict
        return recommend(self, histories, k, trie, beam=max(beam, k), batch_size=batch_size,
                         exclude_history=exclude_history)

    def reasoning_vote(self, reasoning: torch.Tensor | None, present: torch.Tensor | None) -> torch.Tensor | None:
        """The fusion's score-level vote [B, n_items + 1] for H [B,K,D], or None (no fusion, no H, no table)."""
        vote = getattr(self.fusion, "vote", None)
        if vote is None or reasoning is None:
            return None
        if present is None:
            present = torch.ones(reasoning.shape[0], dtype=torch.bool, device=reasoning.device)
        return vote(reasoning, present)

    def aux_loss(
        self, targets: torch.Tensor, reasoning: torch.Tensor | None, present: torch.Tensor | None
    ) -> torch.Tensor | None:
        """lambda * InfoNCE(last reasoning step, target item) from the fusion module, if it defines one."""
        if self.fusion is None or reasoning is None or not hasattr(self.fusion, "contrastive_loss"):
            return None
        if present is None:
            present = torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
        weight = float(getattr(getattr(self.fusion, "config", None), "contrastive_weight", 0.1))
        if weight == 0.0:
            return None
        return weight * self.fusion.contrastive_loss(reasoning, present, self.item_embedding(targets), targets)
