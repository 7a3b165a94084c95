"""Re-check a committed TIGER / HSTU / SCoTER checkpoint: rebuild the model, rank valid and test with the
trie-constrained beam search, and return the same metrics the training run reported (`scoter evaluate`).

A SCoTER checkpoint also needs the reasoning it was trained with (an H folder, e.g. from `scoter reason encode`);
its test split is ranked with H present and with H removed (cold start), as in the training run's result.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline.backbones.beam_search import TrieTensors, recommend
from offline.backbones.train import default_codes_path
from offline.data.datasets import LeaveOneOut
from offline.data.evaluation import rank_metrics, report_ks, subgroup_metrics
from offline.data.splits import Splits
from offline.fusion.checkpoint import is_fused, is_generative_checkpoint, load_ranking_model
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import load_checkpoint, resolve_device
from scoter.h_folder import load_reasoning

log = logging.getLogger(__name__)


def evaluate_generative_checkpoint(
    path: Path | str,
    dataset: str = "beauty",
    codes_path: Path | None = None,
    reasoning_dir: Path | None = None,
    beam: int = 20,
    batch_size: int = 256,
    max_users: int | None = None,
    splits: tuple[str, ...] = ("valid", "test"),
    data_root: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Metrics per split ({"valid": {...}, "test": {...}, "test_subgroups": ...; SCoTER adds "test_h_absent"})."""
    t0 = time.monotonic()
    state = load_checkpoint(path)
    if not is_generative_checkpoint(state):
        raise ValueError(f"{path}: not a TIGER/HSTU/SCoTER checkpoint (no backbone/model_config)")
    codes = SemanticIds.load(codes_path or default_codes_path(dataset))
    fused = is_fused(state)
    if fused and reasoning_dir is None:
        raise ValueError(f"--reasoning: {path} is a SCoTER checkpoint; give the H folder it was trained with")
    dev = resolve_device(device)
    model = load_ranking_model(state, codes).to(dev)
    data = Splits.load(dataset, max_users=max_users, root=data_root)
    reasoning = load_reasoning(reasoning_dir, data.dataset.user_ids) if fused else None
    if reasoning is not None and reasoning.K != state.get("reasoning_steps", reasoning.K):
        raise ValueError(f"--reasoning: K={reasoning.K} steps, the checkpoint was trained with "
                         f"{state['reasoning_steps']}")
    trie = TrieTensors.for_model(model).to(dev)
    loo = LeaveOneOut(data.dataset)
    ks = report_ks(beam)
    runs = [(s, s, True) for s in splits] + ([("test_h_absent", "test", False)] if fused and "test" in splits else [])
    out: dict[str, Any] = {"backbone": state["backbone"], "scoter": fused, "epoch": state.get("epoch"),
                           "checkpoint": str(path)}
    with torch.inference_mode():
        for name, split, with_h in runs:
            hist, tgt = getattr(data, split)
            kwargs: dict[str, Any] = {}
            if reasoning is not None:
                present = reasoning.present[split] if with_h else np.zeros(len(tgt), bool)
                kwargs = {"reasoning": reasoning.H[split], "present": present}
            items, _ = recommend(model, hist, beam, trie, beam=beam, batch_size=batch_size, progress=True, **kwargs)
            out[name] = rank_metrics(items, tgt, ks)
            if name == "test":
                out["test_subgroups"] = subgroup_metrics(items, tgt, loo.sequence_lengths(),
                                                         loo.train_item_counts(), ks)
            log.info("%s: %s", name, out[name])
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out
