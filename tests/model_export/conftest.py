"""Shared fixtures: one small trained model exported once per session (export takes seconds, not ms)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model_export.export import ExportConfig, RankingSource, export_bundle
from tests.model_export.standin import build_trie, train_standin


@pytest.fixture(scope="session")
def trained():
    """(model, codes, data): the stand-in trained a few steps on synthetic sequences."""
    torch.set_num_threads(1)
    return train_standin()


@pytest.fixture(scope="session")
def source(trained) -> RankingSource:
    model, codes, data = trained
    sizes = [int(m.num_embeddings) for m in model.code_emb]
    next_node, leaf_item = build_trie(codes[1:], sizes)
    return RankingSource(
        module=model, backbone="standin", codes=codes, codebook_sizes=sizes,
        item_ids=[f"ext-{i}" for i in range(1, codes.shape[0])], next_node=next_node, leaf_item=leaf_item,
        reasoning_steps=data["reasoning"].shape[1], reasoning_dim=data["reasoning"].shape[2],
        d_item=model.d_item, max_history=data["history"].shape[1], beam=model.beam,
    )


@pytest.fixture(scope="session")
def bundle(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "standin"
    export_bundle(source, out, ExportConfig(model_id="standin", model_version="1"))
    return out


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    """A private copy a test may corrupt."""
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst
