"""Turn a trained checkpoint and a dataset into what export and verify need: a `RankingSource` and input feeds.

Kept apart from export.py so the exporter itself depends only on the Contract 1 forward signature, not on how
the backbones and fusion stages save their checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from model_export.export import RankingSource, checkpoint_provenance
from scoter.h_folder import h_path, read_aligned_split

log = logging.getLogger(__name__)

DEFAULT_REASONING_STEPS = 4


def base_dataset(name: str) -> str:
    """'toys[:2000]' (a `--max-users` run) -> 'toys': the catalogue, and so the item ids, are the whole dataset's."""
    return name.split("[", 1)[0]


def recorded_dataset(checkpoint: Path, state: dict[str, Any]) -> str | None:
    """The dataset a checkpoint was trained on: its own `dataset` field, else the run folder's record of it
    (`last.pt`'s field, or `dataset.name` in result.json / comparison.json beside it)."""
    import json

    if state.get("dataset"):
        return base_dataset(str(state["dataset"]))
    folder = Path(checkpoint).parent
    for name in ("result.json", "comparison.json"):
        path = folder / name
        if path.exists():
            try:
                found = json.loads(path.read_text()).get("dataset", {}).get("name")
            except (json.JSONDecodeError, AttributeError):
                found = None
            if found:
                return base_dataset(str(found))
    last = folder / "last.pt"
    if last.exists() and last.resolve() != Path(checkpoint).resolve():
        from offline.training_utils import load_checkpoint

        found = load_checkpoint(last).get("dataset")
        if found:
            return base_dataset(str(found))
    return None


def load_ranking_source(checkpoint: Path, codes_path: Path | None = None, dataset: str | None = None,
                        beam: int = 20, reasoning_steps: int | None = None) -> RankingSource:
    """Rebuild the backbone (and its fusion module, when the checkpoint has one) behind a RankingModule."""
    from offline.backbones import RankingModule, TrieTensors
    from offline.cli_common import default_codes
    from offline.data.datasets import load_benchmark
    from offline.fusion.checkpoint import load_ranking_model
    from offline.semantic_ids.codes import SemanticIds
    from offline.semantic_ids.trie import PrefixTrie
    from offline.training_utils import load_checkpoint

    state = load_checkpoint(checkpoint)
    for key in ("backbone", "model_config", "model"):
        if key not in state:
            raise ValueError(f"{checkpoint}: field {key!r} missing (not a backbone/fusion checkpoint)")
    dataset = dataset or recorded_dataset(checkpoint, state)
    if not dataset:
        raise ValueError(f"{checkpoint}: no dataset recorded in it or its run folder; pass --dataset")
    codes_path = Path(codes_path) if codes_path else default_codes(dataset)
    sids = SemanticIds.load(codes_path)
    model = load_ranking_model(state, sids)
    fusion_cfg = state.get("fusion_config")
    trie = PrefixTrie.from_codes(sids.codes[1:], sids.codebook_sizes)
    module = RankingModule(model, TrieTensors.from_trie(trie), beam=beam).eval()
    ds = load_benchmark(base_dataset(dataset))  # the catalogue's own ids: items.json = what users send
    if ds.n_items != sids.n_items:
        raise ValueError(f"{codes_path}: {sids.n_items} items but dataset {dataset} has {ds.n_items}")
    k = reasoning_steps or state.get("reasoning_steps") or DEFAULT_REASONING_STEPS
    d = fusion_cfg["reasoning_dim"] if fusion_cfg else state.get("reasoning_dim", 384)
    return RankingSource(
        module=module, backbone=state["backbone"], codes=sids.codes, codebook_sizes=list(sids.codebook_sizes),
        item_ids=ds.external_ids(), next_node=list(trie.next_node), leaf_item=trie.leaf_item,
        reasoning_steps=int(k), reasoning_dim=int(d), d_item=int(model.config.d_model),
        max_history=int(model.config.max_len), beam=beam,
        provenance={**checkpoint_provenance(checkpoint), "codes": str(codes_path.resolve()), "dataset": dataset,
                    "fused": fusion_cfg is not None},
    )


def dataset_feeds(dataset: str, max_history: int, k: int, d: int, split: str = "test",
                  max_users: int | None = None, reasoning_dir: Path | None = None,
                  seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Leave-one-out histories of `split` as graph inputs, their targets, and a note on the reasoning used.

    With `reasoning_dir` (an H folder, scoter/h_folder.py) the real matrices are used, row-aligned to the users;
    otherwise seeded random matrices with ~80% present, so both the fused and the absent path are exercised.
    """
    from offline.data.datasets import LeaveOneOut, load_benchmark

    ds = load_benchmark(base_dataset(dataset))
    if max_users:
        ds = ds.subset(max_users)
    histories, targets = LeaveOneOut(ds, max_len=max_history).eval_examples(split)  # type: ignore[arg-type]
    n = histories.shape[0]
    if reasoning_dir is not None:
        h, present = read_aligned_split(reasoning_dir, split, ds.user_ids)
        if h.shape[1:] != (k, d):
            raise ValueError(f"{h_path(reasoning_dir, split)}: steps x dim {h.shape[1:]} != bundle's ({k}, {d})")
        note = {"reasoning": str(reasoning_dir)}
    else:
        rng = np.random.default_rng(seed)
        h = rng.standard_normal((n, k, d)).astype(np.float32)
        present = rng.random(n) < 0.8
        note = {"reasoning": f"synthetic N(0,1), seed {seed}, {present.mean():.0%} present"}
    feeds = {
        "history": histories.astype(np.int64),
        "history_mask": histories > 0,
        "reasoning": np.ascontiguousarray(h),
        "reasoning_present": present,
    }
    return feeds, targets, {"dataset": ds.name, "split": split, "users": n, **note}
