"""SASRec baseline (Kang & McAuley 2018) with a full-catalogue softmax cross-entropy over tied item embeddings.
It is the cheap, strong reference every generative model here is compared against, trained and evaluated on
exactly the same split and harness."""

from __future__ import annotations

import logging
import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn
from tqdm import tqdm

from offline import distributed
from offline.data.datasets import DataConfig, Dataset, LeaveOneOut
from offline.data.evaluation import EvalConfig, evaluate, topk_from_scores, write_result
from offline.training_utils import (
    EarlyStopping,
    EpochTimer,
    load_checkpoint,
    resolve_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from scoter.io import describe_output

__all__ = [
    "SasrecConfig",
    "SasrecModel",
    "evaluate_checkpoint",
    "load_sasrec",
    "train_sasrec",
    "write_checkpoint_result",
]

log = logging.getLogger(__name__)


class SasrecConfig(BaseModel):
    """Model and training settings. Defaults: the known-good Beauty recipe with the paper's history of 20."""

    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset="beauty"))
    hidden: int = Field(64, ge=1)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(1, ge=1)
    ff_mult: int = Field(4, ge=1, description="feed-forward width = ff_mult * hidden")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="embedding, attention and hidden dropout")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(200, ge=1)
    patience: int = Field(
        15, ge=1, description="epochs without a better validation Recall@10 before stopping"
    )
    all_positions: bool = Field(
        True,
        description="one row per user with a loss at every position (one encoder pass per sequence); "
        "False = one row per training prefix, loss at its newest position",
    )
    sub_windows: bool = Field(True, description="all positions: also train the older targets of users longer "
                              "than the history window (one more row per window; False: the newest only)")
    time_budget_s: float | None = Field(None, gt=0, description="stop training after this many seconds")
    seed: int = 42
    threads: int = Field(1, ge=1, description="torch intra-op threads (the sandbox has 2 shared cores)")
    device: str = Field("cpu", description="'cpu', 'cuda' or 'auto' (cuda when available)")
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @classmethod
    def small(cls, **overrides: Any) -> SasrecConfig:
        """A tiny configuration for tests and demos."""
        base: dict[str, Any] = {"hidden": 32, "n_layers": 1, "dropout": 0.2, "epochs": 2, "patience": 2}
        base.update(overrides)
        return cls(**base)


class SasrecModel(nn.Module):
    """Causal self-attention over left-padded histories; the last position scores every item by a dot product
    with the (tied) item embedding table."""

    def __init__(self, n_items: int, config: SasrecConfig) -> None:
        super().__init__()
        if config.hidden % config.n_heads:
            raise ValueError(f"hidden: {config.hidden} is not divisible by n_heads={config.n_heads}")
        self.n_items = n_items
        self.max_len = config.data.max_len
        self.n_heads = config.n_heads
        self.item_emb = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(self.max_len, config.hidden)
        self.norm = nn.LayerNorm(config.hidden)
        self.drop = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.hidden,
            config.n_heads,
            dim_feedforward=config.ff_mult * config.hidden,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """[B, T] item indices (0 = pad, newest last) -> [B, d] state at the newest position."""
        return self.sequence_states(history)[:, -1]

    def sequence_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """All-position cross-entropy over all items: inputs [B,T], targets [B,T] (0 = no loss there)."""
        real = targets > 0
        logits = self.sequence_states(inputs)[real] @ self.item_emb.weight[1:].T
        return nn.functional.cross_entropy(logits, targets[real] - 1)

    def sequence_states(self, history: torch.Tensor) -> torch.Tensor:
        """[B, T] item indices -> [B, T, d] states (position t sees items <= t)."""
        b, t = history.shape
        if t > self.max_len:
            history = history[:, -self.max_len :]
            t = self.max_len
        real = history > 0
        pos = torch.arange(self.max_len - t, self.max_len, device=history.device)
        x = self.item_emb(history) + self.pos_emb(pos)[None]
        x = self.drop(self.norm(x)) * real.unsqueeze(-1)
        # Query i may attend to key j <= i that is a real item, and always to itself (so pad rows are not empty).
        causal = torch.ones(t, t, dtype=torch.bool, device=history.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=history.device)
        allowed = causal[None] & (real[:, None, :] | eye[None])
        mask = torch.zeros(b, t, t, device=history.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.n_heads, dim=0)
        return self.encoder(x, mask=mask)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Logits over [0..n_items]; column 0 (padding) is -inf."""
        logits = self.encode(history) @ self.item_emb.weight.T
        logits[:, 0] = float("-inf")
        return logits

    @torch.no_grad()
    def recommend(self, histories: np.ndarray, k: int, exclude_history: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Full-catalogue top-k (exact, ties by lower index) for the evaluation harness; the history's own items
        are excluded unless ``exclude_history`` is False (the same rule as the generative models' beam)."""
        was_training = self.training
        self.eval()
        device = self.item_emb.weight.device
        try:
            logits = self(torch.as_tensor(np.asarray(histories), dtype=torch.int64, device=device))
        finally:
            self.train(was_training)
        return topk_from_scores(logits, k, histories, exclude_history)


def _state(model: SasrecModel, config: SasrecConfig, dataset: Dataset, **extra: Any) -> dict[str, Any]:
    return {
        "model": "sasrec",
        "config": config.model_dump(mode="json"),
        "n_items": dataset.n_items,
        "data_checksum": dataset.checksum,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def train_sasrec(config: SasrecConfig, out_dir: Path | str, resume: bool = True) -> dict[str, Any]:
    """Train with early stopping on validation Recall@10, checkpointing every epoch to `out_dir/last.pt`
    (resumed from if present) and the best model to `out_dir/best.pt`; then evaluate the best model on valid
    and test and write `out_dir/results.json`. Returns the results document."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    t_start = time.perf_counter()
    dataset = config.data.load()
    split = LeaveOneOut(dataset, config.data.max_len)
    hist_np, tgt_np = split.train_sequence_examples(config.sub_windows) if config.all_positions else split.train_examples()
    if len(tgt_np) == 0:
        raise ValueError(f"{dataset.name}: no training examples (every user has < 4 items)")
    ctx = distributed.init(resolve_device(config.device))  # world size 1 unless started by torchrun
    device = distributed.local_device(resolve_device(config.device))
    hist, tgt = torch.from_numpy(hist_np).to(device), torch.from_numpy(tgt_np).to(device)
    log.info(
        "%s: %s users, %s items, %s training examples",
        dataset.name,
        dataset.n_users,
        dataset.n_items,
        len(tgt),
    )

    seed_everything(config.seed)
    model = SasrecModel(dataset.n_items, config).to(device)
    step = distributed.wrap(model)  # DDP under torchrun: backward averages the gradients over ranks
    if ctx.rank:
        torch.manual_seed(config.seed + ctx.rank)  # same initial weights, a dropout stream of its own per rank
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    stopper = EarlyStopping(config.patience)
    start_epoch, elapsed_before = 0, 0.0
    history: list[dict[str, float]] = []  # per-epoch loss and validation metrics (kept in last.pt)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.exists():
        ck = load_checkpoint(last_path)
        if _comparable(ck["config"]) != _comparable(config.model_dump(mode="json")) or (
            ck["data_checksum"] != dataset.checksum
        ):
            raise ValueError(
                f"{last_path}: field config: checkpoint was made with a different config or data; "
                "use a new --out or --no-resume"
            )
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        stopper.load_state_dict(ck["early_stopping"])
        set_rng_state(ck["rng"])
        start_epoch, elapsed_before = ck["epoch"] + 1, ck.get("elapsed_s", 0.0)
        history = list(ck.get("history", []))
        if ck.get("world_size", 1) != ctx.world_size:
            log.warning("%s was written by %d processes, resumed by %d: the global batch and the example order "
                        "are the same, the per-rank dropout streams are not", last_path, ck.get("world_size", 1),
                        ctx.world_size)
        log.info(
            "resumed from %s at epoch %d (best valid recall@10 %.4f)", last_path, start_epoch, stopper.best
        )

    loss_fn = nn.CrossEntropyLoss()
    n_batches = math.ceil(len(tgt) / config.batch_size)
    deadline = None if config.time_budget_s is None else t_start + config.time_budget_s - elapsed_before
    timer = EpochTimer(config.epochs, start_epoch, deadline)  # ETAs respect the budget
    out_of_time = False
    for epoch in range(start_epoch, config.epochs):
        if stopper.should_stop or out_of_time:
            break
        timer.start()
        model.train()
        perm = distributed.epoch_permutation(len(tgt), config.seed, epoch, device)
        total = torch.zeros((), device=device)
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}", leave=False, mininterval=10, unit="batch",
                   disable=not ctx.is_main)
        for b in bar:
            batch = perm[b * config.batch_size : (b + 1) * config.batch_size]
            if len(batch) < ctx.world_size:  # a last batch too small to give every rank a row
                break
            idx = distributed.local_rows(batch)  # this rank's slice of the global batch
            if config.all_positions:
                loss = step(model.sequence_loss, hist[idx], tgt[idx])
            else:
                loss = step(lambda: loss_fn(model(hist[idx]), tgt[idx]))  # noqa: B023 - called at once
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            if deadline is not None and distributed.any_true(time.perf_counter() > deadline):
                out_of_time = True  # on every rank at once: none is left waiting in an all-reduce
                break
        train_loop_s = time.perf_counter() - timer.epoch_t0  # the batches alone, without the evaluation
        # every rank evaluates its (identical) weights; rank 0's numbers drive early stopping everywhere
        valid = distributed.broadcast_object(
            evaluate(partial(model.recommend, exclude_history=config.eval.exclude_history), split, "valid", config.eval, subgroups=False)["overall"]
        )
        improved = stopper.step(valid["recall@10"], epoch)
        epoch_loss = distributed.sum_float(float(total)) / len(tgt)
        history.append({"epoch": epoch + 1, "loss": epoch_loss, "valid_recall@10": valid["recall@10"],
                        "valid_ndcg@10": valid["ndcg@10"], "train_s": train_loop_s})
        if not ctx.is_main:
            continue  # rank 0 alone logs and writes checkpoints
        timer.end(
            epoch,
            len(tgt),
            loss=epoch_loss,
            valid_recall10=valid["recall@10"],
            valid_ndcg10=valid["ndcg@10"],
        )
        elapsed = elapsed_before + time.perf_counter() - t_start
        if improved:
            save_checkpoint(best_path, _state(model, config, dataset, epoch=epoch, valid=valid))
        save_checkpoint(
            last_path,
            _state(
                model,
                config,
                dataset,
                epoch=epoch,
                optimizer=opt.state_dict(),
                early_stopping=stopper.state_dict(),
                rng=rng_state(),
                elapsed_s=elapsed,
                world_size=ctx.world_size,
                history=history,
            ),
        )
    train_s = elapsed_before + time.perf_counter() - t_start
    distributed.barrier()
    if not ctx.is_main:
        return {}  # rank 0 evaluates the best model and writes results.json
    log.info("training done: best epoch %d, valid recall@10 %.4f; wrote %s", stopper.best_epoch + 1, stopper.best,
             describe_output(best_path))
    model, _ = load_sasrec(best_path, device)
    metrics = {
        "valid": evaluate(partial(model.recommend, exclude_history=config.eval.exclude_history), split, "valid", config.eval),
        "test": evaluate(partial(model.recommend, exclude_history=config.eval.exclude_history), split, "test", config.eval),
        "best_epoch": stopper.best_epoch + 1,
    }
    return write_result(
        out / "results.json",
        metrics,
        config,
        config.seed,
        dataset,
        elapsed_s=time.perf_counter() - t_start + elapsed_before,
        train_s=train_s,
        checkpoint=str(best_path),
        model="sasrec",
        world_size=ctx.world_size,
        history=history,
    )


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Config fields that must match to resume: all but how long to run and where (epochs, patience, threads,
    device, time budget), so a stopped run can be extended or moved between CPU and GPU. Of the data settings only
    the history length counts: the data itself is compared by checksum, and reader options added later must not
    make an older checkpoint unresumable."""
    skip = ("epochs", "patience", "threads", "device", "time_budget_s", "data")
    return {**{k: v for k, v in config.items() if k not in skip}, "max_len": config["data"]["max_len"]}


def load_sasrec(path: Path | str, device: torch.device | str = "cpu") -> tuple[SasrecModel, dict[str, Any]]:
    """Rebuild a SASRec model from a checkpoint; returns (model in eval mode, checkpoint dict)."""
    ck = load_checkpoint(path)
    if ck.get("model") != "sasrec":
        raise ValueError(f"{path}: field model: expected 'sasrec', got {ck.get('model')!r}")
    config = SasrecConfig.model_validate(ck["config"])
    model = SasrecModel(ck["n_items"], config)
    model.load_state_dict(ck["state_dict"])
    model.to(device).eval()
    return model, ck


def evaluate_checkpoint(path: Path | str, data: DataConfig | None = None) -> dict[str, Any]:
    """Re-evaluate a saved checkpoint on its own dataset (or `data`), checking the data checksum matches."""
    model, ck = load_sasrec(path)
    config = SasrecConfig.model_validate(ck["config"])
    torch.set_num_threads(min(config.threads, os.cpu_count() or 1))
    data = data or config.data
    dataset = data.load()
    if dataset.checksum != ck["data_checksum"]:
        raise ValueError(
            f"{path}: field data_checksum: checkpoint was trained on different data than "
            f"{dataset.name} ({ck['data_checksum'][:12]} != {dataset.checksum[:12]})"
        )
    if dataset.n_items != ck["n_items"]:
        raise ValueError(f"{path}: field n_items: {ck['n_items']} != dataset's {dataset.n_items}")
    split = LeaveOneOut(dataset, data.max_len)
    return {
        "valid": evaluate(partial(model.recommend, exclude_history=config.eval.exclude_history), split, "valid", config.eval),
        "test": evaluate(partial(model.recommend, exclude_history=config.eval.exclude_history), split, "test", config.eval),
        "checkpoint_epoch": ck.get("epoch", -1) + 1,
        "dataset": dataset,
        "config": config,
    }


def write_checkpoint_result(path: Path | str, res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Write `evaluate_checkpoint`'s result (valid, test, checkpoint epoch) as a results JSON with provenance."""
    metrics = {k: res[k] for k in ("valid", "test", "checkpoint_epoch")}
    return write_result(path, metrics, res["config"], res["config"].seed, res["dataset"], **extra)
