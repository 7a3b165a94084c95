"""SASRec: learns a planted pattern, masks padding correctly, checkpoints/resumes, and runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from offline.baselines.sasrec import SasrecConfig, SasrecModel, evaluate_checkpoint, load_sasrec, train_sasrec
from offline.data.datasets import DataConfig
from offline.training_utils import load_checkpoint
from scoter.cli import main
from scoter.paths import data_root

N_ITEMS = 20


def planted(tmp_path: Path, n_users: int = 160) -> DataConfig:
    """Every user walks the cycle 1 -> 2 -> ... -> 20 -> 1 from a random start: the next item is always
    (last % 20) + 1, which a sequence model must pick up from the history."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(n_users):
        start, length = int(rng.integers(0, N_ITEMS)), int(rng.integers(5, 12))
        lines.append(f"u{u} " + " ".join(str((start + t) % N_ITEMS + 1) for t in range(length)))
    folder = tmp_path / "cycle"
    folder.mkdir()
    (folder / "sequences.txt").write_text("\n".join(lines) + "\n")
    return DataConfig(dataset="cycle", root=tmp_path, max_len=8)


def tiny(data: DataConfig, **kw) -> SasrecConfig:
    base = {"data": data, "lr": 5e-3, "batch_size": 64, "dropout": 0.1, "epochs": 12, "patience": 12}
    base.update(kw)
    return SasrecConfig.small(**base)


def test_learns_planted_pattern(tmp_path: Path) -> None:
    doc = train_sasrec(tiny(planted(tmp_path)), tmp_path / "run")
    test = doc["metrics"]["test"]["overall"]
    assert test["recall@5"] > 0.9  # chance is 5/20
    assert doc["metrics"]["test"]["n_users"] == 160
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "results.json").exists()


def test_padding_does_not_change_the_output() -> None:
    torch.manual_seed(0)
    model = SasrecModel(N_ITEMS, SasrecConfig.small(data=DataConfig(dataset="x", max_len=6))).eval()
    short = torch.tensor([[0, 0, 0, 3, 4, 5]])
    with torch.no_grad():
        a = model.encode(short)
        b = model.encode(torch.tensor([[0, 3, 4, 5]]))  # fewer pads, same items at the same end positions
        batch = model.encode(torch.tensor([[0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]]))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, batch[:1], atol=1e-5)  # batch-mates do not leak into each other
    assert torch.isfinite(batch).all()  # an all-padding row does not produce NaN
    items, _ = model.recommend(short.numpy(), 5)
    assert items.shape == (1, 5) and (items > 0).all() and len(set(items[0].tolist())) == 5


def test_resume_continues_and_refuses_other_config(tmp_path: Path) -> None:
    data = planted(tmp_path, n_users=40)
    out = tmp_path / "run"
    train_sasrec(tiny(data, epochs=1), out)
    first = load_checkpoint(out / "last.pt")
    assert first["epoch"] == 0
    train_sasrec(tiny(data, epochs=2), out)  # picks up last.pt and trains only epoch 2
    second = load_checkpoint(out / "last.pt")
    assert second["epoch"] == 1
    assert not torch.equal(first["state_dict"]["item_emb.weight"], second["state_dict"]["item_emb.weight"])
    with pytest.raises(ValueError, match="different config"):
        train_sasrec(tiny(data, epochs=3, hidden=16), out)


def test_evaluate_checkpoint_reproduces_training_numbers(tmp_path: Path) -> None:
    data = planted(tmp_path, n_users=60)
    doc = train_sasrec(tiny(data, epochs=2), tmp_path / "run")
    again = evaluate_checkpoint(tmp_path / "run" / "best.pt")
    assert again["test"]["overall"] == pytest.approx(doc["metrics"]["test"]["overall"])
    model, ck = load_sasrec(tmp_path / "run" / "best.pt")
    assert ck["n_items"] == N_ITEMS and not model.training
    (tmp_path / "cycle" / "sequences.txt").write_text("u0 1 2 3 4\n")
    with pytest.raises(ValueError, match="data_checksum"):
        evaluate_checkpoint(tmp_path / "run" / "best.pt")


@pytest.mark.skipif(
    not (data_root() / "beauty" / "sequences.txt").exists(), reason="benchmark data not present"
)
def test_beauty_subset_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "beauty"
    argv = ["train", "sasrec", "--dataset", "beauty", "--max-users", "200", "--epochs", "1", "--hidden", "32"]
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["dataset"]["users"] == 200 and doc["dataset"]["items"] == 12101
    assert set(doc["metrics"]["test"]["overall"]) == {
        f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)
    }
    assert main(["evaluate", "--checkpoint", str(out / "best.pt")]) == 0
    printed = json.loads(capsys.readouterr().out.split("results:")[-1].split("\n", 1)[1])
    assert printed["test"] == pytest.approx(doc["metrics"]["test"]["overall"])


def test_epoch_eta_respects_the_time_budget(caplog) -> None:
    """100 epochs left at ~0 s each would be an ETA of minutes at best; a budget ending in 60 s caps it at 1 min."""
    import logging
    import time

    from offline.training_utils import EpochTimer

    timer = EpochTimer(total_epochs=10_000, deadline=time.perf_counter() + 60)
    timer.t0 -= 10.0  # one epoch took 10 s: 9,999 more would be ~1,666 min without the budget
    with caplog.at_level(logging.INFO, logger="offline.training_utils"):
        timer.end(0, 100, loss=1.0)
    eta_min = float(caplog.records[-1].getMessage().split("ETA ")[1].split(" min")[0])
    assert 0.9 <= eta_min <= 1.0
