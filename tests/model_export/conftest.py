"""Shared fixtures: one tiny trained model exported once per session (tracing takes seconds, not ms)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model_export.export import ExportConfig, RankingSource, export_bundle
from tests.model_export.tiny_model import train_tiny


@pytest.fixture(scope="session")
def trained() -> tuple[RankingSource, dict]:
    """(source, data): tiny TIGER + fusion, trained a few steps on synthetic sequences."""
    torch.set_num_threads(1)
    return train_tiny("tiger")


@pytest.fixture(scope="session")
def bundle(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny-tiger"
    export_bundle(trained[0], out, ExportConfig(model_id="tiny-tiger", model_version="1"))
    return out


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    """A private copy a test may corrupt."""
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst
