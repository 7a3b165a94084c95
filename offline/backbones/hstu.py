"""HSTU (Zhai et al. 2024, "Actions speak louder than words") with semantic-ID inputs and a transformer SID
decoder, as SCoTER's appendix A.1 describes it. Written from the paper, not from Meta's package."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline.backbones.base import GenerativeBackbone
from offline.backbones.config import HstuConfig
from offline.backbones.item_head import ItemAwareHead
from offline.backbones.layers import CodeDecoder


class HstuBlock(nn.Module):
    """One HSTU layer: U,V,Q,K = Split(SiLU(f1(LN(X)))); A = SiLU(QK^T + rab) / N (pointwise, no softmax, causal;
    N = max_len, the padded length, so left padding never changes a real position's state);
    Y = X + f2(Dropout(LN(A V) * U))."""

    def __init__(self, d: int, heads: int, d_qk: int, d_v: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.heads, self.d_qk, self.d_v = heads, d_qk, d_v
        self.norm_in = nn.LayerNorm(d)
        self.uvqk = nn.Linear(d, heads * (2 * d_v + 2 * d_qk))
        self.max_len = max_len
        self.rab = nn.Parameter(torch.zeros(heads, max_len))  # bias per relative distance 0..max_len-1
        self.norm_attn = nn.LayerNorm(heads * d_v)
        self.out = nn.Linear(heads * d_v, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H = self.heads
        uvqk = F.silu(self.uvqk(self.norm_in(x)))
        u, v, q, k = torch.split(uvqk, [H * self.d_v, H * self.d_v, H * self.d_qk, H * self.d_qk], dim=-1)
        q = q.view(B, T, H, self.d_qk).transpose(1, 2)
        k = k.view(B, T, H, self.d_qk).transpose(1, 2)
        v = v.view(B, T, H, self.d_v).transpose(1, 2)
        pos = torch.arange(T, device=x.device)
        rel = (pos[:, None] - pos[None, :]).clamp(0, self.rab.shape[1] - 1)  # [T,T], distance to the past
        scores = q @ k.transpose(-1, -2) + self.rab[:, rel].unsqueeze(0)
        allowed = (pos[:, None] >= pos[None, :])[None, None] & valid[:, None, None, :]
        attn = F.silu(scores).masked_fill(~allowed, 0.0) / self.max_len
        out = (attn @ v).transpose(1, 2).reshape(B, T, H * self.d_v)
        return x + self.out(self.drop(self.norm_attn(out) * u))


class HstuModel(GenerativeBackbone):
    """Input = item-ID embedding + one embedding per semantic-ID position; 2 HSTU blocks; SID decoder."""

    def __init__(self, config: HstuConfig, codes: np.ndarray | torch.Tensor, codebook_sizes: list[int]) -> None:
        super().__init__(codes, codebook_sizes)
        self.config = config
        d = config.d_model
        # SID-only input (item_id_embedding=False) drops the n_items x d table: items then share parameters
        # only through their codes, as in TIGER
        self.item_emb = nn.Embedding(self.n_items + 1, d, padding_idx=0) if config.item_id_embedding else None
        self.sid_emb = nn.ModuleList(nn.Embedding(size, d) for size in self.codebook_sizes)
        self.pos_emb = nn.Embedding(config.max_len, d)
        tables = ([self.item_emb] if self.item_emb is not None else []) + [*self.sid_emb, self.pos_emb]
        for emb in tables:
            nn.init.normal_(emb.weight, std=d**-0.5)
        self.blocks = nn.ModuleList(
            HstuBlock(d, config.heads, config.d_qk, config.d_v, config.dropout, config.max_len)
            for _ in range(config.blocks)
        )
        self.ln_out = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)
        if config.head == "item":
            self.head = ItemAwareHead(self.codes, d, config.prefix_depths, config.prefix_weight, config.prior_weight)
        else:
            self.decoder = CodeDecoder(config.decoder, self.codebook_sizes, d_memory=d)

    def item_embedding(self, items: torch.Tensor) -> torch.Tensor:
        """Item-ID embedding (if configured) + sum of its per-position semantic-ID embeddings (width d_model)."""
        codes = self.codes[items]
        out = self.item_emb(items) if self.item_emb is not None else 0.0
        for pos, emb in enumerate(self.sid_emb):
            out = out + emb(codes[..., pos])
        return out

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B,T] -> (h_seq [B,T,d_model], mask [B,T]); T capped at max_len, newest kept."""
        history = history[:, -self.config.max_len :]
        T = history.shape[1]
        valid = history > 0
        x = self.item_embedding(history) * self.config.d_model**0.5
        x = x + self.pos_emb.weight[self.config.max_len - T :].unsqueeze(0)
        x = self.drop(x) * valid[:, :, None]
        for block in self.blocks:
            x = block(x, valid) * valid[:, :, None]
        return self.ln_out(x), valid
