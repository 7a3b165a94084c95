"""SASRec's encoder with the semantic-ID item-aware head: a generative recommender that decodes semantic IDs by a
trie-constrained beam (offline/backbones/item_head.py) on top of the causal self-attention encoder of the SASRec
baseline (offline/baselines/sasrec.py), whose layers it reuses unchanged.

Why: on Beauty-sized data SASRec's encoder, trained at every position with a full-catalogue softmax, is the
strongest encoder this project trains on a CPU; sharing its layers lets the generative model start from a trained
SASRec checkpoint (`init_from_sasrec`) and be compared with that SASRec at equal compute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from offline.backbones.base import GenerativeBackbone
from offline.backbones.config import ItemHeadKnobs
from offline.backbones.item_head import ItemAwareHead
from offline.baselines.sasrec import SasrecConfig, SasrecModel
from offline.data.datasets import DataConfig


class SasrecSidConfig(ItemHeadKnobs):
    """The encoder's sizes are SASRec's (the baseline's defaults); the head is always the item-aware one."""

    max_len: int = Field(20, gt=0)
    d_model: int = Field(64, gt=0, description="SASRec's hidden size")
    layers: int = Field(2, gt=0)
    heads: int = Field(1, gt=0)
    ff_mult: int = Field(4, gt=0)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)

    @classmethod
    def small(cls, **overrides: object) -> SasrecSidConfig:
        """Tiny sizes for tests."""
        base: dict[str, object] = {"max_len": 8, "d_model": 24, "layers": 1, "heads": 1, "dropout": 0.0}
        return cls(**{**base, **overrides})

    def sasrec(self) -> SasrecConfig:
        """The baseline config with the same encoder (what a warm-start checkpoint must match)."""
        return SasrecConfig(data=DataConfig(dataset=None, max_len=self.max_len), hidden=self.d_model,
                            n_layers=self.layers, n_heads=self.heads, ff_mult=self.ff_mult, dropout=self.dropout)


class SasrecSidModel(GenerativeBackbone):
    """SasrecModel as the encoder (item table tied to the leaf), ItemAwareHead as the output side."""

    def __init__(self, config: SasrecSidConfig, codes: np.ndarray | torch.Tensor, codebook_sizes: list[int]) -> None:
        super().__init__(codes, codebook_sizes)
        self.config = config
        self.encoder = SasrecModel(self.n_items, config.sasrec())
        self.head = ItemAwareHead(self.codes, config.d_model, config.prefix_depths, config.prefix_weight,
                                  config.prior_weight)

    def item_embedding(self, items: torch.Tensor) -> torch.Tensor:
        return self.encoder.item_emb(items)

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B,T] -> (h_seq [B,T,d], mask [B,T]); T capped at max_len, newest kept."""
        history = history[:, -self.config.max_len :]
        return self.encoder.sequence_states(history), history > 0


def init_from_sasrec(model: SasrecSidModel, checkpoint: Path | str) -> dict:
    """Load a SASRec baseline checkpoint's encoder and item table into ``model`` (the head keeps its init).
    Returns the checkpoint; refuses one whose encoder sizes or item count differ."""
    from offline.baselines.sasrec import load_sasrec

    sasrec, ck = load_sasrec(checkpoint)
    want = model.config.sasrec()
    got = SasrecConfig.model_validate(ck["config"])
    for field in ("hidden", "n_layers", "n_heads", "ff_mult"):
        if getattr(want, field) != getattr(got, field):
            raise ValueError(f"{checkpoint}: field {field}: {getattr(got, field)} != the model's {getattr(want, field)}")
    if sasrec.n_items != model.n_items:
        raise ValueError(f"{checkpoint}: field n_items: {sasrec.n_items} != the model's {model.n_items}")
    model.encoder.load_state_dict(sasrec.state_dict())
    return ck
