"""`scoter export` and `scoter export verify` end to end: a checkpoint in the backbones' format, a tiny dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scoter.bundle import load_bundle
from scoter.cli import main


@pytest.fixture
def tiny_run(trained, tmp_path, monkeypatch):
    """A dataset folder, semantic IDs and a checkpoint, all for the session's tiny trained model."""
    from offline.semantic_ids.codes import SemanticIds

    src, _ = trained
    n_items = src.codes.shape[0] - 1
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    lines = [f"{u + 1} " + " ".join(str(i) for i in range(5 * u + 1, 5 * u + 6)) for u in range(n_items // 5)]
    (data / "sequences.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SCOTER_DATA_DIR", str(tmp_path / "data"))
    codes = SemanticIds(codes=src.codes, codebook_sizes=src.codebook_sizes).save(tmp_path / "codes.npz")
    model = src.module.model
    ckpt = tmp_path / "best.pt"
    torch.save({"backbone": "tiger", "model_config": model.config.model_dump(), "model": model.state_dict(),
                "fusion_config": model.fusion.config.model_dump(), "dataset": "tiny",
                "reasoning_steps": src.reasoning_steps}, ckpt)
    return ckpt, codes, tmp_path


def test_export_then_verify(tiny_run, capsys):
    ckpt, codes, tmp = tiny_run
    out = tmp / "bundle"
    # a SCoTER checkpoint without the published version would serve every request as a reasoning miss
    assert main(["export", "--checkpoint", str(ckpt), "--codes", str(codes), "--out", str(out)]) == 2
    assert "--reasoning-version" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--checkpoint", str(ckpt), "--codes", str(codes), "--out", str(out), "--no-fp16", "--no-int8",
                 "--model-version", "7", "--reasoning-version", "tiny-v1"]) == 0
    manifest, _ = load_bundle(out)
    assert manifest.model_version == "7" and manifest.graphs == {"fp32": "model.onnx"}
    assert manifest.reasoning_version == "tiny-v1"
    assert manifest.export["dataset"] == "tiny" and manifest.export["checkpoint_sha256"]
    report_path = tmp / "verify.json"
    assert main(["export", "verify", "--bundle", str(out), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["users"] == 60
    assert report["variants"]["fp32"]["list_agreement"] >= 0.999
    # a second export to the same place is refused without --overwrite, and the bundle stays valid
    assert main(["export", "--checkpoint", str(ckpt), "--codes", str(codes), "--out", str(out)]) == 2
    load_bundle(out)


def test_export_without_out_is_a_clear_error(capsys):
    assert main(["export", "--checkpoint", "x.pt"]) == 2
    assert "--out" in capsys.readouterr().err


def test_checkpoint_of_the_wrong_kind_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": np.zeros(3)}, bad)
    assert main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "b"), "--dataset", "beauty"]) == 2
    assert "'backbone' missing" in capsys.readouterr().err
