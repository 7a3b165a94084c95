"""One pydantic config per component: the two backbones and the training loop. Defaults are the paper's sizes
(SCoTER appendix A.1 / Table 8); ``small()`` gives tiny sizes for tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DecoderConfig(BaseModel):
    """The semantic-ID decoder: a pre-LN transformer decoder generating one code tuple."""

    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(128, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(6, gt=0)
    d_kv: int = Field(64, gt=0, description="per-head width (T5 style: heads*d_kv may differ from d_model)")
    d_ff: int = Field(1024, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu"] = "relu"


class ItemHeadKnobs(BaseModel):
    """The item-aware head's knobs (offline/backbones/item_head.py), shared by every backbone that can carry it."""

    model_config = ConfigDict(extra="forbid")

    prefix_depths: int = Field(1, ge=0, description="'item' head: leading code depths with a head of their own")
    prefix_weight: float = Field(1.0, ge=0.0, description="'item' head: weight of the prefix cross-entropies")
    prior_weight: float = Field(
        0.0, ge=0.0,
        description="'item' head: weight of the prefix log-probabilities in the beam's scores; 0 ranks by the "
        "item-tied leaf alone (measured best on Beauty validation, BENCHMARKS.md)",
    )


class ItemHeadFields(ItemHeadKnobs):
    """The output-side choice of a backbone that has both: the paper's code decoder or the item-aware head."""

    head: Literal["sid", "item"] = Field(
        "sid",
        description="output side: 'sid' = the paper's code decoder (product of per-level code probabilities); "
        "'item' = per-node prefix heads that prune the beam and an item-tied leaf that ranks "
        "(offline/backbones/item_head.py), trained at every position of a user's sequence",
    )


class TigerConfig(ItemHeadFields):
    """TIGER: T5-style encoder-decoder over semantic-ID tokens (4+4 layers, d 128, 6 heads x 64, d_ff 1024).

    With ``head='item'`` the code decoder is replaced by the item-aware head (as HSTU's): each history item's
    code tokens also carry an item-ID embedding (the tied leaf), and the encoder is block-causal (a token sees the
    tokens of its own and earlier items), so one pass gives a user state after every item and training is
    all-position."""

    max_len: int = Field(20, gt=0, description="history items kept (each becomes L tokens)")
    d_model: int = Field(128, gt=0)
    encoder_layers: int = Field(4, gt=0)
    heads: int = Field(6, gt=0)
    d_kv: int = Field(64, gt=0)
    d_ff: int = Field(1024, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)

    @classmethod
    def small(cls, **overrides: object) -> TigerConfig:
        """Tiny sizes for tests."""
        base: dict[str, object] = {
            "max_len": 8, "d_model": 32, "encoder_layers": 1, "heads": 2, "d_kv": 16, "d_ff": 64, "dropout": 0.0,
            "decoder": DecoderConfig(d_model=32, layers=1, heads=2, d_kv=16, d_ff=64, dropout=0.0),
        }
        return cls(**{**base, **overrides})


class HstuConfig(ItemHeadFields):
    """HSTU encoder (d 50, 2 blocks, 1 head, dropout 0.2, max length 20) + 3-layer SID decoder (4 heads, 256).

    The input of each history position is item-ID embedding + the sum of its semantic-ID embeddings (paper);
    ``item_id_embedding=False`` gives SID-only input (no n_items x d table, TIGER-style sharing through codes).
    Paper numbers stay the defaults: the small-subset variants that scored better (docs/benchmark-history.md)
    differ from them within noise, so they are no grounds to change the paper's architecture."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        """`item_loss_weight` was removed (it hurt, docs/benchmark-history.md); configs saved with its off value
        (0, the default then) still load, so older checkpoints rebuild and resume."""
        if isinstance(data, dict) and "item_loss_weight" in data:
            if data["item_loss_weight"] != 0:
                raise ValueError("item_loss_weight: retired; only 0 (off) can still be read")
            data = {k: v for k, v in data.items() if k != "item_loss_weight"}
        return data

    max_len: int = Field(20, gt=0)
    d_model: int = Field(50, gt=0)
    blocks: int = Field(2, gt=0)
    heads: int = Field(1, gt=0)
    d_qk: int = Field(50, gt=0)
    d_v: int = Field(50, gt=0)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    item_id_embedding: bool = Field(
        True, description="add a per-item embedding to the summed semantic-ID embeddings (paper); False = SID-only"
    )
    decoder: DecoderConfig = Field(
        default_factory=lambda: DecoderConfig(d_model=256, layers=3, heads=4, d_kv=64, d_ff=1024, dropout=0.1)
    )

    @classmethod
    def small(cls, **overrides: object) -> HstuConfig:
        """Tiny sizes for tests."""
        base: dict[str, object] = {
            "max_len": 8, "d_model": 24, "blocks": 1, "d_qk": 24, "d_v": 24, "dropout": 0.0,
            "decoder": DecoderConfig(d_model=32, layers=1, heads=2, d_kv=16, d_ff=64, dropout=0.0),
        }
        return cls(**{**base, **overrides})


class TrainConfig(BaseModel):
    """The training loop: AdamW + linear warmup, early stopping on validation Recall@10 from beam search."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(200, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(1000, ge=0)
    schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="after warmup: constant, or cosine decay to 10% over the time budget (or over all epochs)",
    )
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(20, gt=0, description="epochs without a better validation Recall@10 before stopping")
    beam: int = Field(20, gt=0)
    eval_users: int = Field(2000, ge=0, description="validation subset evaluated every epoch (0 = all)")
    eval_every: int = Field(1, gt=0)
    eval_batch: int = Field(256, gt=0)
    max_users: int | None = Field(None, gt=0, description="train/evaluate on the first N users only")
    time_budget_s: float | None = Field(None, gt=0, description="stop training after this many seconds")
    seed: int = 0
    num_threads: int = Field(1, gt=0, description="torch CPU threads")
    sub_windows: bool = Field(True, description="all-position models: also train the older targets of users "
                              "longer than the history window (one more row per window; False: the newest only)")

    @classmethod
    def for_backbone(cls, backbone: str, **overrides: object) -> TrainConfig:
        """Per-backbone defaults (paper batch sizes: 256 TIGER, 512 HSTU)."""
        base: dict[str, object] = {"batch_size": 512 if backbone == "hstu" else 256}
        return cls(**{**base, **overrides})
