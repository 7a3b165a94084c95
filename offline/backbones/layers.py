"""Building blocks shared by both backbones: multi-head attention on torch SDPA with a key/value cache, and the
semantic-ID decoder that generates one code tuple token by token (teacher forcing and incremental steps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from offline.backbones.config import DecoderConfig

# Token ids inside the code vocabulary: 0 = pad, 1 = BOS, then position l's codes at offsets[l] + code.
PAD, BOS = 0, 1


def token_offsets(codebook_sizes: list[int]) -> list[int]:
    """Offset of each code position in the shared token vocabulary (so equal codes at different levels differ)."""
    offsets, start = [], 2
    for size in codebook_sizes:
        offsets.append(start)
        start += size
    return offsets


class Attention(nn.Module):
    """Multi-head attention, T5 style (inner width heads*d_kv independent of d_model), on F.scaled_dot_product_attention."""

    def __init__(self, d_model: int, heads: int, d_kv: int, dropout: float, d_source: int | None = None) -> None:
        super().__init__()
        self.heads, self.d_kv, self.dropout = heads, d_kv, dropout
        inner = heads * d_kv
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_source or d_model, inner, bias=False)
        self.v = nn.Linear(d_source or d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B,S,inner] -> [B,H,S,d_kv]."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_kv).transpose(1, 2)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k(source)), self.split(self.v(source))

    def attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        q = self.split(self.q(x))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal)
        return self.o(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        k, v = self.project_kv(x)
        return self.attend(x, k, v, attn_mask, is_causal)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_ff),
            nn.ReLU() if activation == "relu" else nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_ff, d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Pre-LN transformer encoder layer (bidirectional, padding masked)."""

    def __init__(self, d_model: int, heads: int, d_kv: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, d_kv, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_mask))
        return x + self.drop(self.ff(self.ln2(x)))


class DecoderLayer(nn.Module):
    """Pre-LN decoder layer: causal self-attention (cached when stepping), cross-attention, feed-forward."""

    def __init__(self, cfg: DecoderConfig, d_memory: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.heads, cfg.d_kv, cfg.dropout)
        # keys/values straight from the (possibly narrower) memory: HSTU's 50-d states need no 256-d copy
        self.cross_attn = Attention(d, cfg.heads, cfg.d_kv, cfg.dropout, d_source=d_memory)
        self.ff = FeedForward(d, cfg.d_ff, cfg.dropout, cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)


class CodeDecoder(nn.Module):
    """Generates an item's code tuple (L tokens) conditioned on encoder memory via cross-attention plus the
    memory's last state added to every input (a cheap direct path from the newest history position)."""

    def __init__(self, cfg: DecoderConfig, codebook_sizes: list[int], d_memory: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.codebook_sizes = list(codebook_sizes)
        self.offsets = token_offsets(self.codebook_sizes)
        self.n_tokens = self.offsets[-1] + self.codebook_sizes[-1]
        self.register_buffer("offsets_t", torch.tensor(self.offsets, dtype=torch.long), persistent=False)
        d = cfg.d_model
        self.embed = nn.Embedding(self.n_tokens, d, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        self.pos = nn.Embedding(len(self.codebook_sizes), d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.ctx_proj = nn.Linear(d_memory, d)
        self.layers = nn.ModuleList(DecoderLayer(cfg, d_memory) for _ in range(cfg.layers))
        self.ln_out = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def code_length(self) -> int:
        return len(self.codebook_sizes)

    def tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., L] (per-position code values) -> token ids with per-position offsets."""
        return codes + self.offsets_t

    def logits_at(self, h: torch.Tensor, position: int) -> torch.Tensor:
        """Tied output head restricted to position ``position``'s codebook: [..., d] -> [..., V_l]."""
        start = self.offsets[position]
        w = self.embed.weight[start : start + self.codebook_sizes[position]]
        return h @ w.t()

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings scaled to unit per-dimension variance (the table is initialised at d^-0.5 so the
        tied output head starts with unit-scale logits), so token identity is not drowned by the context."""
        return self.embed(tokens) * self.cfg.d_model**0.5

    def _memory(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory for cross-attention, context vector from the newest slot added to every decoder input)."""
        return mem, self.ctx_proj(mem[:, -1])

    def forward(self, mem: torch.Tensor, mem_mask: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher forcing: codes [B,L] -> logits per position (list of [B,V_l])."""
        B, L = codes.shape
        m, ctx = self._memory(mem)
        bos = torch.full((B, 1), BOS, dtype=torch.long, device=codes.device)
        inp = torch.cat([bos, self.tokens(codes)[:, :-1]], dim=1)
        x = self.embed_tokens(inp) + self.pos.weight[:L].unsqueeze(0) + ctx.unsqueeze(1)
        x = self.drop(x)
        cross_mask = mem_mask[:, None, None, :]
        for layer in self.layers:
            x = x + layer.drop(layer.self_attn(layer.ln1(x), is_causal=True))
            k, v = layer.cross_attn.project_kv(m)
            x = x + layer.drop(layer.cross_attn.attend(layer.ln2(x), k, v, cross_mask))
            x = x + layer.drop(layer.ff(layer.ln3(x)))
        h = self.ln_out(x)
        return [self.logits_at(h[:, pos], pos) for pos in range(L)]

    # -- incremental decoding (beam search) ----------------------------------------------------------------
    def init_state(self, mem: torch.Tensor, mem_mask: torch.Tensor, beams: int) -> dict[str, object]:
        """Cross-attention keys/values computed once per user and shared by its beams (not copied: in a step
        the beams of a user are that user's query rows, so one attention call serves them all)."""
        m, ctx = self._memory(mem)
        cross = [layer.cross_attn.project_kv(m) for layer in self.layers]
        return {
            "cross": cross,
            "mask": mem_mask[:, None, None, :],
            "beams": beams,
            "ctx": ctx.repeat_interleave(beams, dim=0),
            "self": [None] * len(self.layers),
        }

    def step(self, token: torch.Tensor, position: int, state: dict) -> tuple[torch.Tensor, dict]:
        """One decoding step: token [N] (the previous token, BOS at position 0) -> log-probs [N, V_position]."""
        x = self.embed_tokens(token)[:, None, :] + self.pos.weight[position] + state["ctx"][:, None, :]
        new_self = []
        for layer, (ck, cv), cache in zip(self.layers, state["cross"], state["self"], strict=True):
            hx = layer.ln1(x)
            k, v = layer.self_attn.project_kv(hx)
            if cache is not None:
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
            new_self.append((k, v))
            x = x + layer.self_attn.attend(hx, k, v)
            q = layer.ln2(x).reshape(ck.shape[0], state["beams"], -1)  # [B, beams, d]: beams as query rows
            x = x + layer.cross_attn.attend(q, ck, cv, state["mask"]).reshape(x.shape)
            x = x + layer.ff(layer.ln3(x))
        h = self.ln_out(x[:, 0])
        logp = torch.log_softmax(self.logits_at(h, position).float(), dim=-1)
        return logp, {**state, "self": new_self}

    @staticmethod
    def widen(state: dict, beams: int) -> dict:
        """After a one-row-per-user first step: the per-user context for `beams` rows (the self-attention
        caches are widened by `reorder` with each user's row repeated)."""
        return {**state, "beams": beams, "ctx": state["ctx"].repeat_interleave(beams // state["beams"], dim=0)}

    @staticmethod
    def reorder(state: dict, index: torch.Tensor) -> dict:
        """Keep the self-attention caches of the surviving beams (index [N] into the flat batch*beam axis).
        Cross-attention state needs no reordering: beams never move between users."""
        return {**state, "self": [(k.index_select(0, index), v.index_select(0, index)) for k, v in state["self"]]}
