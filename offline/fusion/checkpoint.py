"""The one way a trained TIGER / HSTU / SCoTER model comes back from its checkpoint: evaluation (`scoter
evaluate`) and export (`scoter export`) rebuild it here, so a checkpoint field added by training is read in one
place. The fusion module is attached when the checkpoint has one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from offline.backbones.base import GenerativeBackbone
from offline.backbones.train import build_model
from offline.fusion.model import FusionConfig, ReasoningFusion
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import load_checkpoint


def is_generative_checkpoint(state: dict[str, Any]) -> bool:
    """TIGER/HSTU (and SCoTER on them) checkpoints carry `backbone` and `model_config`; SASRec's do not."""
    return "backbone" in state and "model_config" in state


def is_fused(state: dict[str, Any]) -> bool:
    """A SCoTER checkpoint: the backbone plus the reasoning-fusion module (and the K it was trained with)."""
    return "fusion_config" in state


def load_ranking_model(checkpoint: Path | str | dict[str, Any], codes: SemanticIds) -> GenerativeBackbone:
    """The model of a `best.pt`/`last.pt` (a path, or the state already loaded), in eval mode on the CPU.

    Weights saved as float16 (a weights-only copy) come back as float32."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    where = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    for key in ("backbone", "model_config", "model"):
        if key not in state:
            raise ValueError(f"{where}: field {key!r} missing (not a TIGER/HSTU/SCoTER checkpoint)")
    model = build_model(state["backbone"], codes.codes, codes.codebook_sizes, state["model_config"])
    if is_fused(state):
        model.fusion = ReasoningFusion(FusionConfig(**state["fusion_config"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    return model.eval()
