"""Order-preserving reasoning fusion (SCoTER section 3.3.2, eq. 1-8), shared by the TIGER and HSTU backbones.

The backbone calls ``fusion(h_seq, mask, H, present)`` on its encoder output before decoding. A user whose
reasoning matrix is absent (cold start, store miss) gets ``h_seq`` back unchanged, so the fused model degrades to
exactly its backbone path; training drops H for a share of rows so the decoder sees both cases.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

StepMode = Literal["stepwise", "mean", "last", "single_vector"]


class FusionConfig(BaseModel):
    """One fusion module's settings. Defaults are the paper's SCoTER-T settings with our 384-d sentence encoder."""

    model_config = ConfigDict(extra="forbid")

    reasoning_dim: int = Field(384, gt=0, description="D: width of one reasoning-step embedding")
    d_item: int = Field(128, gt=0, description="width of the backbone's sequence states (128 TIGER, 50 HSTU)")
    heads: int = Field(6, gt=0, description="cross-attention heads (6 on TIGER, 4 on HSTU)")
    attn_dim: int | None = Field(
        None,
        gt=0,
        description="inner attention width; None = d_item rounded up to a multiple of heads (50/4 -> 52, 128/6 -> 132)",
    )
    max_steps: int = Field(16, gt=0, description="size of the step position table (K must not exceed it)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    use_position: bool = True
    step_mode: StepMode = "stepwise"
    contrastive_weight: float = Field(0.1, ge=0.0, description="lambda in L = L_rec + lambda * InfoNCE")
    temperature: float = Field(0.1, gt=0.0, description="tau of the InfoNCE loss")
    absent_rate: float = Field(0.2, ge=0.0, le=1.0, description="share of training rows whose H is dropped")
    vote: bool = Field(True, description="the chain's last step (the recommendation) also votes for items: item "
                       "score + w * cos(H_K, the item's text embedding), w tuned on validation after training "
                       "(the grid holds 0, so on validation the vote never scores below the fusion alone)")
    vote_items: int = Field(0, ge=0, description="rows of the vote's item-text table (n_items + 1, row 0 padding); "
                            "set by the trainer when it attaches the table, 0 = no table")
    vote_grid: tuple[float, ...] = Field((0.0, 1.0, 2.0, 4.0, 8.0, 16.0), min_length=1,
                                         description="vote weights tried on validation")

    @model_validator(mode="after")
    def _attn_divisible(self) -> FusionConfig:
        if self.attn_dim is not None and self.attn_dim % self.heads:
            raise ValueError(f"attn_dim: {self.attn_dim} is not divisible by heads={self.heads}")
        return self

    @property
    def inner_dim(self) -> int:
        """Attention width actually used (head-divisible)."""
        return self.attn_dim or math.ceil(self.d_item / self.heads) * self.heads

    @property
    def uses_contrastive(self) -> bool:
        return self.contrastive_weight > 0.0

    @classmethod
    def tiger(cls, **overrides: object) -> FusionConfig:
        """SCoTER-T: d_item 128, 6 heads."""
        return cls(**{"d_item": 128, "heads": 6, **overrides})

    @classmethod
    def hstu(cls, **overrides: object) -> FusionConfig:
        """SCoTER-H: d_item 50, 4 heads (attention runs at width 52)."""
        return cls(**{"d_item": 50, "heads": 4, **overrides})

    @classmethod
    def small(cls, **overrides: object) -> FusionConfig:
        """Tiny sizes for tests and demos."""
        return cls(**{"reasoning_dim": 16, "d_item": 24, "heads": 4, "max_steps": 8, **overrides})

    @classmethod
    def ablation(cls, name: str, base: FusionConfig) -> FusionConfig:
        """The paper's Table 4/10 switches by name (see ABLATIONS)."""
        if name not in ABLATIONS:
            raise ValueError(f"ablation: unknown name {name!r}; choose from {sorted(ABLATIONS)}")
        return base.model_copy(update=ABLATIONS[name])


# name -> config fields it changes (paper Table 4 / Table 10).
ABLATIONS: dict[str, dict[str, object]] = {
    "full": {},
    "no_position": {"use_position": False},
    "no_contrastive": {"contrastive_weight": 0.0},
    "no_position_no_contrastive": {"use_position": False, "contrastive_weight": 0.0},
    "single_vector": {"step_mode": "single_vector"},
    "mean": {"step_mode": "mean"},
    "last": {"step_mode": "last"},
    "no_vote": {"vote": False},
}


class ReasoningFusion(nn.Module):
    """Adapter + step positions + cross-attention (sequence queries, steps as keys/values) + sigmoid gate + LN."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        d, inner = config.d_item, config.inner_dim
        self.adapter = nn.Sequential(nn.Linear(config.reasoning_dim, d), nn.LayerNorm(d))  # eq. 1
        self.positions = nn.Embedding(config.max_steps, d)  # P_j, eq. 2
        nn.init.normal_(self.positions.weight, std=0.02)
        self.q_proj = nn.Linear(d, inner)
        self.k_proj = nn.Linear(d, inner)
        self.v_proj = nn.Linear(d, inner)
        self.out_proj = nn.Linear(inner, d)
        self.gate = nn.Linear(2 * d, d)  # W_g, b_g, eq. 4
        self.norm = nn.LayerNorm(d)  # eq. 5
        self.dropout = nn.Dropout(config.dropout)
        if config.vote_items:  # filled by set_item_text / the checkpoint; float16 halves the checkpoint's share
            self.register_buffer("item_text", torch.zeros(config.vote_items, config.reasoning_dim, dtype=torch.float16))
            self.register_buffer("vote_weight", torch.zeros(()))

    # -- the recommendation step's vote (score-level) -----------------------------------------------------------
    def set_item_text(self, table: torch.Tensor | np.ndarray) -> None:
        """Item text embeddings [n_items, D] (row i-1 = item i, the space H's steps are encoded in), stored unit
        length with a zero padding row."""
        t = F.normalize(torch.as_tensor(np.asarray(table), dtype=torch.float32), dim=-1)
        if t.shape != (self.config.vote_items - 1, self.config.reasoning_dim):
            raise ValueError(f"item text: expected [{self.config.vote_items - 1}, {self.config.reasoning_dim}], got "
                             f"{list(t.shape)}")
        self.item_text.copy_(torch.cat([t.new_zeros(1, t.shape[1]), t]).to(self.item_text.dtype))

    def vote(self, H: torch.Tensor, present: torch.Tensor) -> torch.Tensor | None:
        """Additive item scores [B, n_items + 1] from H [B,K,D]: the vote weight times the cosine of the last step
        to each item's text; zero for rows without H. None without an item table."""
        if not self.config.vote_items:
            return None
        present = present.to(torch.bool)
        q = F.normalize(H[:, -1].float(), dim=-1)
        q = torch.where(present[:, None], q, torch.zeros((), dtype=q.dtype, device=q.device))  # NaN-safe
        return self.vote_weight * (q @ self.item_text.float().T)

    # -- projection (precomputable per user; the service may store Z instead of H) -------------------------
    def project(self, H: torch.Tensor) -> torch.Tensor:
        """H [B,K,D] -> Z_pos [B,K',d_item] (K' = 1 for the pooled ablations). Depends on H and weights only."""
        cfg = self.config
        if H.dim() != 3 or H.shape[-1] != cfg.reasoning_dim:
            raise ValueError(f"H: expected [B, K, {cfg.reasoning_dim}], got {list(H.shape)}")
        if H.shape[1] > cfg.max_steps:
            raise ValueError(f"H: K={H.shape[1]} steps exceeds max_steps={cfg.max_steps}")
        if cfg.step_mode == "single_vector":  # one embedding for the whole chain (a K=1 H is used as is)
            H = H.mean(dim=1, keepdim=True)
        z = self.adapter(H)
        if cfg.use_position:
            z = z + self.positions.weight[: z.shape[1]].unsqueeze(0)
        if cfg.step_mode == "mean":
            z = z.mean(dim=1, keepdim=True)
        elif cfg.step_mode == "last":
            z = z[:, -1:]
        return z

    # -- fusion ---------------------------------------------------------------------------------------------
    def forward(
        self, h_seq: torch.Tensor, mask: torch.Tensor, H: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """Fused states [B,T,d]; rows with ``present`` False (or dropped in training) return ``h_seq`` exactly.
        H is one matrix per row ([B,K,D], present [B]) or one per position ([B,T,K,D], present [B,T]: all-position
        training, where position t's H comes from the prefix ending at t)."""
        present = present.to(torch.bool)
        if self.training and self.config.absent_rate > 0:
            keep = torch.rand(present.shape, device=present.device) >= self.config.absent_rate
            present = present & keep
        # Zero absent rows first so NaN/garbage in a missing H cannot leak, not even through gradients.
        H = torch.where(present[..., None, None], H, torch.zeros((), dtype=H.dtype, device=H.device))
        if H.dim() == 4:
            B, T = H.shape[:2]
            z = self.project(H.reshape(B * T, *H.shape[2:]))
            return self.fuse(h_seq, mask, z.view(B, T, *z.shape[1:]), present)
        return self.fuse(h_seq, mask, self.project(H), present)

    def fuse(
        self, h_seq: torch.Tensor, mask: torch.Tensor, z_pos: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 3-5 on already projected steps Z_pos ([B,K',d], or [B,T,K',d] per position); ``mask`` [B,T] is True
        at real (non-pad) tokens; ``present`` [B] or [B,T]."""
        B, T, d = h_seq.shape
        if d != self.config.d_item:
            raise ValueError(f"h_seq: expected width d_item={self.config.d_item}, got {d}")
        heads = self.config.heads
        hd = self.config.inner_dim // heads
        p = self.config.dropout if self.training else 0.0
        if z_pos.dim() == 4:  # each position attends to its own K' steps
            q = self.q_proj(h_seq).view(B, T, 1, heads, hd).transpose(2, 3)  # [B,T,h,1,hd]
            k = self.k_proj(z_pos).view(B, T, -1, heads, hd).transpose(2, 3)  # [B,T,h,K',hd]
            v = self.v_proj(z_pos).view(B, T, -1, heads, hd).transpose(2, 3)
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=p).reshape(B, T, -1)  # eq. 3
        else:
            q = self.q_proj(h_seq).view(B, T, heads, hd).transpose(1, 2)
            k = self.k_proj(z_pos).view(B, -1, heads, hd).transpose(1, 2)
            v = self.v_proj(z_pos).view(B, -1, heads, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(B, T, -1)  # eq. 3
        a = self.dropout(self.out_proj(a))
        g = torch.sigmoid(self.gate(torch.cat([h_seq, a], dim=-1)))  # eq. 4
        fused = self.norm(g * h_seq + (1.0 - g) * a)  # eq. 5
        present = present.to(torch.bool)
        use = (present[:, :, None] if present.dim() == 2 else present[:, None, None]) & mask.to(torch.bool)[:, :, None]
        return torch.where(use, fused, h_seq)

    # -- contrastive alignment ---------------------------------------------------------------------------------
    def contrastive_loss(
        self,
        H: torch.Tensor,
        present: torch.Tensor,
        target_emb: torch.Tensor,
        target_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """lambda-free InfoNCE (eq. 6) between the last projected step z_K^pos and the target item vector.

        Uses every row whose H truly exists (presence dropout is for the recommendation path only)."""
        present = present.to(torch.bool)
        if not self.config.uses_contrastive or not bool(present.any()):
            return target_emb.new_zeros(())
        z_last = self.project(H[present])[:, -1]
        ids = target_ids[present] if target_ids is not None else None
        return info_nce(z_last, target_emb[present], self.config.temperature, ids)


def info_nce(
    z: torch.Tensor, v: torch.Tensor, temperature: float = 0.1, target_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE with cosine similarity and in-batch negatives (eq. 6). Rows sharing a target item are not used
    as each other's negatives (they would be false negatives)."""
    if z.shape != v.shape:
        raise ValueError(f"info_nce: z {list(z.shape)} and target embeddings {list(v.shape)} differ")
    logits = F.normalize(z, dim=-1) @ F.normalize(v, dim=-1).T / temperature
    if target_ids is not None:
        same = target_ids[:, None] == target_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(z.shape[0], device=z.device)
    return F.cross_entropy(logits, labels)
