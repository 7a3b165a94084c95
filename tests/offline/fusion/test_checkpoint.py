"""The one checkpoint loader: the committed checkpoints under benchmarks/checkpoints/ load with
`weights_only=True` and rebuild their models; a file that needs other globals is refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from offline.backbones.config import HstuConfig
from offline.baselines.sasrec import load_sasrec
from offline.fusion.checkpoint import is_fused, load_ranking_model
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import load_checkpoint, rng_state, save_checkpoint

CHECKPOINTS = Path(__file__).resolve().parents[3] / "benchmarks" / "checkpoints"
GENERATIVE = ["beauty_hstu_cpu.pt", "beauty_hstu_cpu45.pt", "beauty_scoter_hstu_cpu.pt", "beauty_scoter_hstu_cpu45.pt",
              "beauty_hstu_item.pt", "beauty_sasrec_sid.pt", "beauty_scoter_sasrec_sid.pt"]


@pytest.fixture(scope="module")
def codes() -> SemanticIds:
    return SemanticIds.load(CHECKPOINTS / "beauty_semantic_ids_rqvae.npz")


@pytest.mark.parametrize("name", GENERATIVE)
def test_committed_generative_checkpoints_rebuild(name: str, codes: SemanticIds) -> None:
    state = load_checkpoint(CHECKPOINTS / name)
    model = load_ranking_model(state, codes)
    assert not model.training
    assert (model.fusion is not None) == is_fused(state) == ("scoter" in name)
    weights = model.state_dict()
    for key, value in state["model"].items():  # values compared in float32 (the vote's item texts stay float16)
        got = weights[key].float() if weights[key].is_floating_point() else weights[key]
        torch.testing.assert_close(got, value.float() if value.is_floating_point() else value)


def test_committed_sasrec_and_student_checkpoints_load() -> None:
    model, state = load_sasrec(CHECKPOINTS / "beauty_sasrec.pt")
    assert state["n_items"] > 0 and sum(p.numel() for p in model.parameters()) > 0
    student = load_checkpoint(CHECKPOINTS / "beauty_encoder_student.pt")
    assert {"head", "k", "config"} <= set(student)


def test_training_state_round_trips_and_foreign_globals_are_refused(tmp_path: Path) -> None:
    """What Trainer writes (numpy RNG state, config paths) loads; a pickled object of any other class does not."""
    save_checkpoint(tmp_path / "last.pt", {"rng": rng_state(), "root": tmp_path, "stopper": {"best": float("-inf")}})
    back = load_checkpoint(tmp_path / "last.pt")
    assert back["root"] == tmp_path and back["rng"]["numpy"][0] == "MT19937"
    torch.save({"x": pickle.PickleError("not allowed")}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt: refused.*PickleError"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_a_retired_config_field_loads_only_when_off() -> None:
    """Older HSTU checkpoints hold `item_loss_weight: 0.0`; the field is gone, that value still reads."""
    assert "item_loss_weight" not in HstuConfig(item_loss_weight=0.0).model_dump()
    with pytest.raises(ValueError, match="item_loss_weight: retired"):
        HstuConfig(item_loss_weight=1.0)
