"""Generative backbones over semantic IDs (TIGER, HSTU), trie-constrained beam search, and training.

Names resolve lazily so that importing a submodule such as `offline.backbones.cli` (which `scoter serve`'s
parser loads) does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RankingModule": "beam_search",
    "TrieTensors": "beam_search",
    "constrained_beam_search": "beam_search",
    "recommend": "beam_search",
    "DecoderConfig": "config",
    "HstuConfig": "config",
    "TigerConfig": "config",
    "TrainConfig": "config",
    "HstuModel": "hstu",
    "TigerModel": "tiger",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
