"""Generative backbones over semantic IDs (TIGER, HSTU), trie-constrained beam search, and training."""

from offline.backbones.beam_search import RankingModule, TrieTensors, constrained_beam_search, recommend
from offline.backbones.config import DecoderConfig, HstuConfig, TigerConfig, TrainConfig
from offline.backbones.hstu import HstuModel
from offline.backbones.tiger import TigerModel

__all__ = [
    "DecoderConfig",
    "HstuConfig",
    "HstuModel",
    "RankingModule",
    "TigerConfig",
    "TigerModel",
    "TrainConfig",
    "TrieTensors",
    "constrained_beam_search",
    "recommend",
]
