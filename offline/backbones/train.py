"""Training loop shared by TIGER and HSTU: AdamW with linear warmup, teacher-forced CE, early stopping on
validation Recall@10 from the constrained beam search (a fixed validation subset each epoch, the full split at
the end), an atomic checkpoint every epoch (resumable after a kill), an optional wall-clock budget, CUDA if
present. The same entry point continues a run on whatever machine has the checkpoint."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from offline import distributed
from offline.backbones.base import GenerativeBackbone
from offline.backbones.beam_search import TrieTensors, recommend
from offline.backbones.config import HstuConfig, TigerConfig, TrainConfig
from offline.backbones.hstu import HstuModel
from offline.backbones.sasrec_sid import SasrecSidConfig, SasrecSidModel
from offline.backbones.tiger import TigerModel
from offline.data.datasets import LeaveOneOut
from offline.data.evaluation import rank_metrics, write_result
from offline.data.splits import Splits
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import (
    EarlyStopping,
    load_checkpoint,
    resolve_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from scoter.io import describe_output
from scoter.paths import artifacts_root

log = logging.getLogger(__name__)

Backbone = Literal["tiger", "hstu", "sasrec-sid"]
LAST, BEST = "last.pt", "best.pt"


def default_codes_path(dataset: str) -> Path:
    return artifacts_root() / dataset / "semantic_ids_rqvae.npz"


def build_model(
    backbone: Backbone, codes: np.ndarray, codebook_sizes: list[int], config: dict[str, Any] | None = None
) -> GenerativeBackbone:
    """A fresh model; ``config`` is the backbone config as a dict (None = paper defaults)."""
    if backbone == "tiger":
        return TigerModel(TigerConfig(**(config or {})), codes, codebook_sizes)
    if backbone == "hstu":
        return HstuModel(HstuConfig(**(config or {})), codes, codebook_sizes)
    if backbone == "sasrec-sid":
        return SasrecSidModel(SasrecSidConfig(**(config or {})), codes, codebook_sizes)
    raise ValueError(f"backbone: expected 'tiger', 'hstu' or 'sasrec-sid', got {backbone!r}")


def evaluate(
    model: GenerativeBackbone,
    trie: TrieTensors,
    histories: np.ndarray,
    targets: np.ndarray,
    beam: int = 20,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, float]:
    """Full-catalogue Recall/NDCG@{5,10,20} from the constrained beam search."""
    items, _ = recommend(model, histories, beam, trie, beam=beam, batch_size=batch_size, progress=progress)
    ks = tuple(k for k in (1, 5, 10, 20) if k <= beam)
    return rank_metrics(items, targets, ks=ks)


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """Multiplier of the base learning rate: linear warmup, then constant or cosine down to 10%
    (``progress`` in [0, 1] is the share of the time budget, or of all epochs, used so far)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        return warm
    return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


class Trainer:
    """Owns one run directory: ``last.pt`` (full state, every epoch), ``best.pt`` (weights of the best
    validation epoch), ``log.jsonl`` (one line per epoch), ``result.json`` (final test metrics)."""

    def __init__(
        self,
        backbone: Backbone,
        splits: Splits,
        codes: SemanticIds,
        out_dir: Path,
        train_cfg: TrainConfig,
        model_cfg: dict[str, Any] | None = None,
        device: str = "auto",
        init_from: Path | None = None,
    ) -> None:
        self.backbone, self.splits, self.out = backbone, splits, Path(out_dir)
        self.cfg = train_cfg
        self.dist = distributed.init(resolve_device(device))  # world size 1 unless started by torchrun
        self.device = distributed.local_device(resolve_device(device))
        if codes.n_items != splits.dataset.n_items:
            raise ValueError(
                f"codes: {codes.n_items} items but dataset {splits.dataset.name} has {splits.dataset.n_items}"
            )
        torch.set_num_threads(train_cfg.num_threads)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        seed_everything(train_cfg.seed)
        init_state = None
        if (self.out / LAST).exists():  # a resumed run keeps the architecture it was started with
            model_cfg = load_checkpoint(self.out / LAST)["model_config"]
        elif init_from is not None:  # warm start from weights only (e.g. a model trained on another machine)
            init_state = load_checkpoint(init_from)
            if init_state.get("backbone") != backbone:
                raise ValueError(f"init_from: {init_from} holds a {init_state.get('backbone')!r} model")
            model_cfg = init_state["model_config"]
        self.model = build_model(backbone, codes.codes, codes.codebook_sizes, model_cfg).to(self.device)
        self.model_cfg = self.model.config.model_dump()
        if init_state is not None:
            self.model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                        for k, v in init_state["model"].items()})
            log.info("%s: initialised from %s (epoch %s there)", backbone, init_from, init_state.get("epoch"))
        self.trie = TrieTensors.for_model(self.model).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        self.epoch, self.step = 0, 0
        self.elapsed_before_s = 0.0  # wall time earlier fit() calls of this run used (kept in last.pt)
        self.t_start: float | None = None
        self.stopper = EarlyStopping(train_cfg.patience)
        self.finished = False
        rng = np.random.default_rng(train_cfg.seed)
        n_valid = len(splits.valid[1])
        size = n_valid if train_cfg.eval_users == 0 else min(train_cfg.eval_users, n_valid)
        self.valid_subset = np.sort(rng.choice(n_valid, size=size, replace=False))
        if (self.out / LAST).exists():
            self._resume()

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "model_config": self.model_cfg,
            "train_config": self.cfg.model_dump(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "elapsed_s": self.elapsed_s(),
            "stopper": self.stopper.state_dict(),
            "finished": self.finished,
            "rng": rng_state(),
            "dataset": self.splits.dataset.name,
            "world_size": self.dist.world_size,
        }

    def _resume(self) -> None:
        state = load_checkpoint(self.out / LAST)
        if state["backbone"] != self.backbone:
            raise ValueError(f"{self.out / LAST}: checkpoint is {state['backbone']!r}, not {self.backbone!r}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.elapsed_before_s = float(state.get("elapsed_s", 0.0))
        self.stopper.load_state_dict(state["stopper"])
        # more epochs asked for than the run had, and patience not exhausted: the run goes on
        self.finished = state["finished"] and (self.epoch >= self.cfg.epochs or self.stopper.should_stop)
        set_rng_state(state["rng"])
        log.info("resumed %s from %s at epoch %d (best val recall@10 %.4f)",
                 self.backbone, self.out / LAST, self.epoch, self.stopper.best)

    def _save(self) -> None:
        if self.dist.is_main:  # rank 0 alone writes; every rank reads last.pt to resume
            save_checkpoint(self.out / LAST, self._state())

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- training -------------------------------------------------------------------------------------------
    def elapsed_s(self) -> float:
        """Wall time this run has trained for, over every fit() call: a resumed run continues its schedule
        and its budget where the killed one left them instead of starting both again."""
        now = 0.0 if self.t_start is None else time.monotonic() - self.t_start
        return self.elapsed_before_s + now

    def _progress(self, n_batches: int) -> float:
        """Share of the run done: of the time budget if there is one, else of all epochs' steps."""
        if self.cfg.time_budget_s is not None:  # the slowest rank's clock: every rank sets the same lr
            return distributed.max_float(self.elapsed_s()) / self.cfg.time_budget_s
        return self.step / max(1, self.cfg.epochs * n_batches)

    def _batches_per_epoch(self, n_examples: int) -> int:
        return (n_examples + self.cfg.batch_size - 1) // self.cfg.batch_size

    def _warn_if_not_annealed(self, n_examples: int) -> None:
        """Early stopping under a cosine schedule sized to the budget can end the run at a high learning rate, and
        on Beauty a fully annealed shorter run beat a longer one stopped half-way (BENCHMARKS.md)."""
        if self.cfg.schedule != "cosine":
            return
        factor = lr_factor(self.cfg, self.step, self._progress(self._batches_per_epoch(n_examples)))
        if factor > 0.5:
            log.warning("%s: stopped with the learning rate still at %.0f%% of its peak: the cosine schedule never "
                        "annealed; a shorter --time-budget (or fewer --epochs) or a larger --patience lets it",
                        self.run_name, 100 * factor)

    # -- hooks a subclass (the SCoTER trainer) overrides; the loop, checkpoints and stopping stay here ----------
    @property
    def run_name(self) -> str:
        return self.backbone

    def batch_loss(self, idx: torch.Tensor, hist: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Loss of one mini-batch (rows ``idx`` of the training tensors) and its logged parts ("ce", "prefix", "aux")."""
        if self.model.all_positions:
            return self.model.sequence_loss(hist[idx], tgt[idx])
        return self.model.loss(hist[idx], tgt[idx])

    def training_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """What an epoch shuffles: one row per user sequence (all-position models) or one per prefix."""
        if self.model.all_positions:
            return LeaveOneOut(self.splits.dataset, self.model.config.max_len).train_sequence_examples(
                self.cfg.sub_windows)
        return self.splits.train

    def validation_metrics(self, v_hist: np.ndarray, v_tgt: np.ndarray) -> dict[str, float]:
        """Metrics on the validation subset that early stopping watches."""
        return evaluate(self.model, self.trie, v_hist, v_tgt, self.cfg.beam, self.cfg.eval_batch)

    def best_state(self) -> dict[str, Any]:
        """What ``best.pt`` holds: enough to rebuild the model for evaluation and export."""
        return {"backbone": self.backbone, "model_config": self.model_cfg, "model": self.model.state_dict(),
                "epoch": self.epoch, "dataset": self.splits.dataset.name}

    def _train_epoch(self, hist: torch.Tensor, tgt: torch.Tensor, deadline: float | None) -> tuple[float, bool]:
        """One pass over the shuffled training examples; returns (mean loss, budget ran out)."""
        self.model.train()
        n, bs = hist.shape[0], self.cfg.batch_size
        n_batches = self._batches_per_epoch(n)
        perm = distributed.epoch_permutation(n, self.cfg.seed, self.epoch, self.device)  # same on every rank
        sums: dict[str, float] = {"ce": 0.0}  # every loss part the model reports, shown on the progress bar
        batches, out_of_time = 0, False
        bar = tqdm(range(0, n, bs), desc=f"{self.run_name} epoch {self.epoch + 1}", unit="batch", mininterval=5,
                   disable=not self.dist.is_main)
        for start in bar:
            if n - start < self.dist.world_size:  # a last batch too small to give every rank a row
                break
            idx = distributed.local_rows(perm[start : start + bs])  # bs is the global batch; this rank's slice
            lr = self.cfg.lr * lr_factor(self.cfg, self.step, self._progress(n_batches))
            for group in self.opt.param_groups:
                group["lr"] = lr
            loss, parts = self._ddp(self.batch_loss, idx, hist, tgt)  # DDP averages the gradients over ranks
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.step += 1
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
            batches += 1
            if batches % 20 == 0:
                bar.set_postfix({**{k: f"{v / batches:.4f}" for k, v in sums.items()}, "lr": f"{lr:.2e}"})
            if deadline is not None and distributed.any_true(time.monotonic() > deadline):
                out_of_time = True  # on every rank at once: none is left waiting in an all-reduce
                break
        bar.close()
        return distributed.sum_float(sums["ce"]) / max(distributed.sum_float(batches), 1), out_of_time

    def fit(self) -> None:
        """Train until epochs, patience or the time budget runs out; checkpoint every epoch."""
        if self.finished:
            log.info("%s: training already finished in %s", self.run_name, self.out)
            return
        budget = self.cfg.time_budget_s
        if budget is not None and self.elapsed_before_s >= budget:
            log.warning("%s: the time budget of %.0f s is used up (%.0f s trained in %s); pass a larger "
                        "--time-budget to continue this run", self.run_name, budget, self.elapsed_before_s, self.out)
            return
        self.t_start = time.monotonic()
        deadline = None if budget is None else self.t_start + budget - self.elapsed_before_s
        train_hist, train_tgt = self.training_arrays()
        hist = torch.as_tensor(train_hist).to(self.device)
        tgt = torch.as_tensor(train_tgt).to(self.device)
        v_hist, v_tgt = self.splits.valid
        v_hist, v_tgt = v_hist[self.valid_subset], v_tgt[self.valid_subset]
        t_run = time.monotonic()
        epochs_here = 0  # epochs of this fit() call (a resumed run's earlier epochs are not in t_run)
        out_of_time = False
        self._ddp = distributed.wrap(self.model, find_unused_parameters=True)  # after any fusion is attached
        if self.dist.rank:
            torch.manual_seed(self.cfg.seed + self.dist.rank)  # a dropout stream of its own per rank
        while self.epoch < self.cfg.epochs:
            t0 = time.monotonic()
            loss, out_of_time = self._train_epoch(hist, tgt, deadline)
            train_s = time.monotonic() - t0
            if out_of_time:  # partial epoch: keep the weights, do not count the epoch
                log.info("%s: time budget reached during epoch %d", self.run_name, self.epoch + 1)
                self._evaluate_and_track(v_hist, v_tgt, loss, train_s, partial=True)
                break
            self.epoch += 1
            if self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs:
                self._evaluate_and_track(v_hist, v_tgt, loss, train_s)
            else:
                self._save()
            if self.stopper.should_stop:
                log.info("%s: early stop at epoch %d (best epoch %d)", self.run_name, self.epoch,
                         self.stopper.best_epoch)
                self._warn_if_not_annealed(hist.shape[0])
                break
            epochs_here += 1
            per_epoch = (time.monotonic() - t_run) / epochs_here
            eta_s = per_epoch * (self.cfg.epochs - self.epoch)
            if deadline is not None:  # the budget ends the run first when it is the nearer bound
                eta_s = min(eta_s, max(deadline - time.monotonic(), 0.0))
            log.info("%s: epoch %d/%d loss %.4f %.1fs | ETA %.1f min (max)", self.run_name, self.epoch,
                     self.cfg.epochs, loss, train_s, eta_s / 60)
        self.finished = not out_of_time  # a budget stop can be continued later with a larger budget (e.g. on a GPU)
        self._save()
        self.elapsed_before_s, self.t_start = self.elapsed_s(), None

    def _evaluate_and_track(
        self, v_hist: np.ndarray, v_tgt: np.ndarray, loss: float, train_s: float, partial: bool = False
    ) -> None:
        t0 = time.monotonic()
        metrics = distributed.broadcast_object(self.validation_metrics(v_hist, v_tgt))  # rank 0's drive stopping
        key = f"recall@{min(10, self.cfg.beam)}"
        improved = self.stopper.step(metrics[key], self.epoch)
        if improved and self.dist.is_main:
            save_checkpoint(self.out / BEST, self.best_state())
        record = {"epoch": self.epoch, "partial": partial, "step": self.step, "loss": loss, "train_s": train_s,
                  "eval_s": time.monotonic() - t0, "valid_subset": metrics, "best": self.stopper.best}
        self._log(record)
        label = f"{self.epoch + 1} (partial)" if partial else str(self.epoch)
        log.info("%s: epoch %s val(%d users) %s %.4f%s", self.run_name, label, len(v_tgt), key, metrics[key],
                 (f" (best; wrote {describe_output(self.out / BEST)})" if self.dist.is_main else " (best)")
                 if improved else "")
        self._save()

    # -- final evaluation -----------------------------------------------------------------------------------
    def final_evaluation(self, result_path: Path | None = None, progress: bool = True) -> dict[str, Any]:
        """Best weights on the full validation and test splits (beam search), written as a results JSON."""
        distributed.barrier()  # best.pt is complete
        if not self.dist.is_main:
            return {}  # rank 0 evaluates and writes
        best = self.out / BEST
        if best.exists():
            self.model.load_state_dict(load_checkpoint(best)["model"])
        t0 = time.monotonic()
        valid = evaluate(self.model, self.trie, *self.splits.valid, self.cfg.beam, self.cfg.eval_batch, progress)
        test = evaluate(self.model, self.trie, *self.splits.test, self.cfg.beam, self.cfg.eval_batch, progress)
        metrics = {"valid": valid, "test": test}
        log.info("%s final: test %s", self.backbone, json.dumps(test))
        path = result_path or self.out / "result.json"
        write_result(
            path,
            metrics,
            {"backbone": self.backbone, "model": self.model_cfg, "train": self.cfg.model_dump()},
            self.cfg.seed,
            self.splits.dataset,
            elapsed_s=time.monotonic() - t0,
            epochs_trained=self.epoch,
            best_epoch=self.stopper.best_epoch,
            device=str(self.device),
            device_name=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            parameters=sum(p.numel() for p in self.model.parameters()),
        )
        return metrics
