"""Every artifact writer's log line says the size on disk of what it wrote (scoter.io.describe_output): the H
folder writer (scoter/h_folder.py), SASRec's and the generative backbones' best.pt, and `scoter reason publish`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from scoter import h_folder
from scoter.io import describe_output, disk_usage, format_size
from scoter.testing import redis_server, redis_server_binary


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                         (5 * 2**20 + 2**19, "5.5 MiB"), (3 * 2**30, "3.00 GiB")])
def test_format_size_uses_binary_units(n: int, text: str) -> None:
    assert format_size(n) == text


def test_describe_output_counts_a_folders_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 2048)
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 100)
    assert disk_usage(tmp_path) == (2148, 2)
    assert describe_output(tmp_path) == f"{tmp_path} (2 files, 2.1 KiB)"
    assert describe_output(tmp_path / "a.bin") == f"{tmp_path / 'a.bin'} (2.0 KiB)"
    assert describe_output(tmp_path / "missing") == f"{tmp_path / 'missing'} (0 B)"


def _sized(record: logging.LogRecord, path: Path) -> bool:
    """The record names `path` followed by its real size on disk."""
    return f"{path} ({format_size(path.stat().st_size)})" in record.getMessage()


def test_h_folder_writers_log_each_file_with_its_size(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.INFO, logger="scoter.h_folder"):
        for split in h_folder.SPLITS:
            h_folder.write_split(tmp_path, split, rng.normal(size=(50, 3, 16)).astype(np.float16))
        h_folder.write_train_examples(tmp_path, rng.normal(size=(120, 3, 16)).astype(np.float16))
        h_folder.write_user_ids(tmp_path, [f"u{i}" for i in range(50)])
        h_folder.write_meta(tmp_path, {"K": 3, "D": 16})
    records = [r for r in caplog.records if r.name == "scoter.h_folder"]
    for split in h_folder.SPLITS:
        line = next(r for r in records if "H_" + split + ".npy" in r.getMessage())
        assert _sized(line, h_folder.h_path(tmp_path, split))
        flags = h_folder.present_path(tmp_path, split)
        assert f"[50, 3, 16] float16, 50/50 present ({flags.name} {format_size(flags.stat().st_size)})" in line.getMessage()
    assert any(_sized(r, tmp_path / h_folder.TRAIN_EXAMPLES) for r in records)
    assert any(_sized(r, tmp_path / h_folder.USER_IDS) for r in records)
    size, files = disk_usage(tmp_path)
    closing = records[-1].getMessage()  # meta.json is written last: the line sizes the whole folder
    assert f"H folder {tmp_path} ({files} files, {format_size(size)}), K=3, D=16" in closing, closing


def test_sasrec_best_checkpoint_line_has_its_size(tmp_path: Path, caplog) -> None:
    from offline.baselines.sasrec import train_sasrec
    from tests.offline.baselines.test_sasrec import planted, tiny

    with caplog.at_level(logging.INFO, logger="offline.baselines.sasrec"):
        train_sasrec(tiny(planted(tmp_path, n_users=40), epochs=1), tmp_path / "run")
    best = tmp_path / "run" / "best.pt"
    done = [r for r in caplog.records if "training done" in r.getMessage()]
    assert done and _sized(done[-1], best), [r.getMessage() for r in done]


def test_backbone_best_checkpoint_line_has_its_size(tmp_path: Path, caplog) -> None:
    from offline.backbones import HstuConfig, TrainConfig
    from offline.backbones.train import Trainer
    from offline.data.datasets import LeaveOneOut
    from offline.data.splits import Splits
    from offline.semantic_ids.codes import SemanticIds
    from tests.offline.backbones.test_backbones import SIZES, planted_codes, planted_dataset

    ds = planted_dataset(40)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    cfg = TrainConfig(epochs=1, batch_size=64, beam=5, eval_users=10)
    trainer = Trainer("hstu", splits, SemanticIds(codes=planted_codes(), codebook_sizes=SIZES), tmp_path, cfg,
                      HstuConfig.small().model_dump(), device="cpu")
    with caplog.at_level(logging.INFO, logger="offline.backbones.train"):
        trainer.fit()
    best = [r for r in caplog.records if "(best; wrote" in r.getMessage()]
    assert best and _sized(best[-1], tmp_path / "best.pt"), [r.getMessage() for r in caplog.records]


@pytest.mark.skipif(redis_server_binary() is None, reason="no redis-server binary")
def test_publish_line_says_how_much_it_wrote(tmp_path: Path, caplog) -> None:
    """The bytes publish reports are the bytes the store holds for the keys it wrote (a private redis-server)."""
    import redis

    from offline.reasoning.config import PublishConfig
    from offline.reasoning.publish import publish
    from scoter import reasoning_store

    h = np.random.default_rng(0).normal(size=(6, 3, 8)).astype(np.float32)
    present = np.array([True] * 5 + [False])
    users = [f"u{i}" for i in range(6)]
    cfg = PublishConfig(reasoning_version="sizes-v1", batch_size=4, dtype="float16")
    with redis_server(tmp_path) as (_, url), caplog.at_level(logging.INFO, logger="offline.reasoning.publish"):
        client = redis.Redis.from_url(url)
        rep = publish(client, h, present, users, cfg, histories=[["SKU-1", "SKU-2"]] * 6)
        stored = sum(client.strlen(reasoning_store.reasoning_key("sizes-v1", u)) for u in users[:5])
        stored += sum(client.strlen(reasoning_store.history_key("sizes-v1", u)) for u in users)
        client.close()
    assert rep["bytes_written"] == stored > 5 * 3 * 8 * 2
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("published sizes-v1"))
    assert f"wrote 5 H values and their histories, {format_size(stored)}" in line, line
