"""A tiny TIGER, HSTU or SCoTER-HSTU training run on the backbone tests' planted data, started by
tests/offline/test_distributed.py as one process or under torchrun: `python -m tests.offline.ddp_worker KIND OUT`.
Rank 0's trainer writes log.jsonl, last.pt, best.pt and result.json in OUT."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from offline.backbones import HstuConfig, TigerConfig, TrainConfig
from offline.backbones.train import Trainer
from offline.data.datasets import LeaveOneOut
from offline.data.splits import Splits
from offline.fusion.model import FusionConfig
from offline.fusion.train import ScoterTrainer
from offline.semantic_ids.codes import SemanticIds
from scoter.h_folder import SPLITS, ReasoningArrays
from tests.offline.backbones.test_backbones import SIZES, planted_codes, planted_dataset


def main(kind: str, out: Path) -> None:
    torch.set_num_threads(1)
    ds = planted_dataset(120)
    loo = LeaveOneOut(ds, max_len=8)
    splits = Splits(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))
    codes = SemanticIds(codes=planted_codes(), codebook_sizes=SIZES)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, warmup_steps=5, beam=5, eval_users=60, patience=5)
    if kind == "tiger":
        trainer = Trainer("tiger", splits, codes, out, cfg, TigerConfig.small().model_dump(), device="cpu")
    elif kind == "hstu":
        trainer = Trainer("hstu", splits, codes, out, cfg, HstuConfig.small().model_dump(), device="cpu")
    else:  # SCoTER on HSTU with a fixed random H per user (the same on every rank)
        rng = np.random.default_rng(7)
        H = {s: rng.normal(size=(ds.n_users, 3, 16)).astype(np.float32) for s in SPLITS}
        reasoning = ReasoningArrays(H, {s: np.ones(ds.n_users, bool) for s in SPLITS}, "random")
        fusion = FusionConfig.small(dropout=0.0, absent_rate=0.0)
        trainer = ScoterTrainer("hstu", splits, codes, out, cfg, fusion, reasoning, HstuConfig.small().model_dump(),
                                device="cpu")
    trainer.fit()
    trainer.final_evaluation(progress=False)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
