"""Own catalogues: turn a shop's interaction table (and item table) into a dataset folder every stage reads by
name (`scoter data import`), keeping the shop's own item ids as the public ids.

The folder has the benchmark layout (`sequences.txt` over dense 1-based indices, `items.jsonl`) plus
`dataset.json`, which says `public_id: source_id`: `load_benchmark` then gives each item its shop id as its
external id, so requests, responses, stored histories and the bundle's items.json all speak the shop's ids while
the models see dense indices. The folder is written beside its final place and renamed, never half-written.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from offline.data.datasets import DATASET_META, DataConfig, Dataset
from scoter.io import describe_output
from scoter.paths import data_root, datasets_root

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ImportConfig(BaseModel):
    """What `scoter data import` reads and where it writes."""

    name: str = Field(description="dataset name: the --dataset every later command takes")
    data: DataConfig = Field(description="the interaction table, its columns, the item table, k-core")
    out_root: Path | None = Field(None, description="default: $SCOTER_ARTIFACTS/datasets")
    overwrite: bool = False


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"--name: {name!r} must be letters, digits, '.', '_' or '-' (it names folders and keys)")
    if (data_root() / name / "sequences.txt").exists():
        raise ValueError(f"--name: {name!r} is a benchmark under {data_root()}; choose another name")


def _check_user_ids(ds: Dataset) -> None:
    for uid in ds.user_ids:
        if not uid or any(c.isspace() for c in uid):
            raise ValueError(f"field user: user id {uid!r} is empty or contains whitespace")


def write_dataset_folder(ds: Dataset, dest: Path, meta: dict[str, Any], overwrite: bool = False) -> Path:
    """Write `ds` (its external ids become `source_id`) as sequences.txt + items.jsonl + dataset.json."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise ValueError(f"{dest} already exists (pass --overwrite to replace it)")
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with open(tmp / "sequences.txt", "w", encoding="utf-8") as fh:
        for uid, seq in zip(ds.user_ids, ds.sequences, strict=True):
            fh.write(" ".join([uid, *map(str, seq.tolist())]) + "\n")
    with open(tmp / "items.jsonl", "w", encoding="utf-8") as fh:
        for i, it in enumerate(ds.items, 1):
            rec = {"item_id": i, "source_id": it.item_id, "title": it.title, "brand": it.brand,
                   "categories": it.categories}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (tmp / DATASET_META).write_text(json.dumps({"format_version": FORMAT_VERSION, "public_id": "source_id",
                                                **meta}, indent=2) + "\n", encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def import_catalogue(cfg: ImportConfig) -> tuple[Path, Dataset]:
    """Read, k-core filter and write the catalogue; returns (folder, the dataset as later stages will load it)."""
    from offline.data.datasets import load_benchmark

    _check_name(cfg.name)
    ds = cfg.data.model_copy(update={"name": cfg.name}).load()
    _check_user_ids(ds)
    root = Path(cfg.out_root) if cfg.out_root else datasets_root()
    meta = {
        "name": cfg.name,
        "source": {
            "interactions": str(Path(cfg.data.interactions_path).resolve()),  # type: ignore[arg-type]
            "items": str(Path(cfg.data.items_path).resolve()) if cfg.data.items_path else None,
            "sha256": ds.checksum,
            "columns": {"user": cfg.data.user_col, "item": cfg.data.item_col, "time": cfg.data.time_col,
                        "items": cfg.data.columns.model_dump()},
            "k_core": cfg.data.k_core,
        },
        "stats": ds.stats(),
    }
    folder = write_dataset_folder(ds, root / cfg.name, meta, overwrite=cfg.overwrite)
    loaded = load_benchmark(cfg.name, root)
    if loaded.external_ids() != ds.external_ids():  # the round trip is the contract: fail loudly if it breaks
        raise RuntimeError(f"{folder}: item ids did not survive the round trip")
    log.info("imported %s: %d users, %d items, %d interactions; wrote %s", cfg.name, ds.n_users,
             ds.n_items, ds.n_interactions, describe_output(folder))
    return folder, loaded
