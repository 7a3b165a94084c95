"""TIGER (Rajput et al. 2023) as configured in SCoTER: a T5-style encoder-decoder over semantic-ID tokens.

A lean re-implementation instead of HF T5 (cheaper per epoch on CPUs): pre-LN layers on torch SDPA,
learned absolute positions (token slot + code position) instead of T5's bucketed relative bias, and one token
embedding shared by the encoder, the decoder input and the tied output head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from offline.backbones.base import GenerativeBackbone
from offline.backbones.config import TigerConfig
from offline.backbones.layers import PAD, CodeDecoder, EncoderLayer


class TigerModel(GenerativeBackbone):
    """History items -> L code tokens each -> transformer encoder; the decoder generates the next code tuple."""

    def __init__(self, config: TigerConfig, codes: np.ndarray | torch.Tensor, codebook_sizes: list[int]) -> None:
        super().__init__(codes, codebook_sizes)
        if config.decoder.d_model != config.d_model:
            raise ValueError("decoder.d_model: TIGER shares token embeddings, so it must equal d_model")
        self.config = config
        d, L = config.d_model, self.code_length
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

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B,T] -> token states [B, T*L, d_model] and their mask (T capped at max_len, newest kept)."""
        history = history[:, -self.config.max_len :]
        B, T = history.shape
        L = self.code_length
        valid = history > 0
        tokens = self.decoder.tokens(self.codes[history])  # [B,T,L]
        tokens = tokens.masked_fill(~valid[:, :, None], PAD)
        x = self.decoder.embed_tokens(tokens)
        x = x + self.slot.weight[self.config.max_len - T :][None, :, None, :] + self.level.weight[None, None]
        x = self.drop(x.reshape(B, T * L, -1))
        mask = valid[:, :, None].expand(B, T, L).reshape(B, T * L)
        keep = mask.clone()
        keep[:, -1] = True  # an all-pad row must not produce NaN
        attn_mask = keep[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        return self.ln_out(x), mask

    def item_embedding(self, items: torch.Tensor) -> torch.Tensor:
        """Mean of the item's code-token embeddings (width d_model)."""
        return self.decoder.embed(self.decoder.tokens(self.codes[items])).mean(dim=-2)
