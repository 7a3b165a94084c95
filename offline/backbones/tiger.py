"""TIGER (Rajput et al. 2023) as configured in SCoTER: a T5-style encoder-decoder over semantic-ID tokens.

A lean re-implementation instead of HF T5 (cheaper per epoch on CPUs): pre-LN layers on torch SDPA,
learned absolute positions (token slot + code position) instead of T5's bucketed relative bias, and one token
embedding shared by the encoder, the decoder input and the tied output head.

``head='item'`` keeps TIGER's input (every history item as its L code tokens) and swaps the output side for the
item-aware head: the encoder becomes block-causal so one pass yields a state after every history item (the state
of the item's last code token), and each token also carries its item's ID embedding, which the leaf is tied to."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from offline.backbones.base import GenerativeBackbone
from offline.backbones.config import TigerConfig
from offline.backbones.item_head import ItemAwareHead
from offline.backbones.layers import PAD, CodeDecoder, EncoderLayer, token_offsets


class TigerModel(GenerativeBackbone):
    """History items -> L code tokens each -> transformer encoder; the decoder generates the next code tuple."""

    def __init__(self, config: TigerConfig, codes: np.ndarray | torch.Tensor, codebook_sizes: list[int]) -> None:
        super().__init__(codes, codebook_sizes)
        self.config = config
        d, L = config.d_model, self.code_length
        if config.head == "item":
            offsets = token_offsets(self.codebook_sizes)
            self.register_buffer("offsets_t", torch.tensor(offsets, dtype=torch.long), persistent=False)
            self.token_emb = nn.Embedding(offsets[-1] + self.codebook_sizes[-1], d, padding_idx=PAD)
            self.item_emb = nn.Embedding(self.n_items + 1, d, padding_idx=0)
            for emb in (self.token_emb, self.item_emb):
                nn.init.normal_(emb.weight, std=d**-0.5)
            self.head = ItemAwareHead(self.codes, d, config.prefix_depths, config.prefix_weight, config.prior_weight)
        else:
            if config.decoder.d_model != d:
                raise ValueError("decoder.d_model: TIGER shares token embeddings, so it must equal d_model")
            self.decoder = CodeDecoder(config.decoder, self.codebook_sizes, d_memory=d)
        self.slot = nn.Embedding(config.max_len, d)  # which history item (oldest..newest)
        self.level = nn.Embedding(L, d)  # which code position inside the item
        for emb in (self.slot, self.level):
            nn.init.normal_(emb.weight, std=0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(d, config.heads, config.d_kv, config.d_ff, config.dropout)
            for _ in range(config.encoder_layers)
        )
        self.ln_out = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)

    def _token_inputs(self, history: torch.Tensor) -> torch.Tensor:
        """history [B,T] -> the code tokens' input vectors [B,T,L,d] (padding slots are PAD tokens)."""
        valid = history > 0
        if self.head is not None:
            tokens = (self.codes[history] + self.offsets_t).masked_fill(~valid[:, :, None], PAD)
            x = (self.token_emb(tokens) + self.item_emb(history)[:, :, None, :]) * self.config.d_model**0.5
        else:
            tokens = self.decoder.tokens(self.codes[history]).masked_fill(~valid[:, :, None], PAD)
            x = self.decoder.embed_tokens(tokens)
        T = history.shape[1]
        return x + self.slot.weight[self.config.max_len - T :][None, :, None, :] + self.level.weight[None, None]

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B,T] -> token states [B, T*L, d_model] and their mask (T capped at max_len, newest kept); with
        the item head, block-causal, one state per history item [B, T, d_model] (its last code token's)."""
        history = history[:, -self.config.max_len :]
        B, T = history.shape
        L = self.code_length
        valid = history > 0
        x = self.drop(self._token_inputs(history).reshape(B, T * L, -1))
        mask = valid[:, :, None].expand(B, T, L).reshape(B, T * L)
        if self.head is not None:
            pos = torch.arange(T * L, device=history.device)
            slot = pos // L
            diagonal = pos[:, None] == pos[None, :]  # a padding token sees itself (no all-masked row)
            attn_mask = ((slot[None, :] <= slot[:, None])[None] & mask[:, None, :]) | diagonal
            attn_mask = attn_mask[:, None]  # [B,1,T*L,T*L]
        else:
            keep = mask.clone()
            keep[:, -1] = True  # an all-pad row must not produce NaN
            attn_mask = keep[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        if self.head is not None:
            return self.ln_out(x.view(B, T, L, -1)[:, :, -1]), valid
        return self.ln_out(x), mask

    def item_embedding(self, items: torch.Tensor) -> torch.Tensor:
        """The item-ID embedding (item head: the tied leaf), else the mean of the item's code-token embeddings."""
        if self.head is not None:
            return self.item_emb(items)
        return self.decoder.embed(self.decoder.tokens(self.codes[items])).mean(dim=-2)
