"""Training loop shared by TIGER and HSTU: AdamW with linear warmup, teacher-forced CE, early stopping on
validation Recall@10 from the constrained beam search (a fixed validation subset each epoch, the full split at
the end), an atomic checkpoint every epoch (resumable after a kill), an optional wall-clock budget, CUDA if
present. The same entry point continues a run on whatever machine has the checkpoint."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from offline.backbones.base import GenerativeBackbone
from offline.backbones.beam_search import TrieTensors, recommend
from offline.backbones.config import HstuConfig, TigerConfig, TrainConfig
from offline.backbones.hstu import HstuModel
from offline.backbones.tiger import TigerModel
from offline.data import Dataset, LeaveOneOut, load_benchmark
from offline.evaluation import rank_metrics, write_result
from offline.semantic_ids import SemanticIds
from offline.training_utils import (
    EarlyStopping,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from scoter.paths import artifacts_root

log = logging.getLogger(__name__)

Backbone = Literal["tiger", "hstu"]
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
    raise ValueError(f"backbone: expected 'tiger' or 'hstu', got {backbone!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return torch.device(name)


@dataclass
class Splits:
    """Leave-one-out arrays for one dataset (histories left-padded to max_len)."""

    dataset: Dataset
    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    @classmethod
    def load(cls, name: str, max_len: int = 20, max_users: int | None = None, root: Path | None = None) -> Splits:
        ds = load_benchmark(name, root)
        if max_users:
            ds = ds.subset(max_users)
        loo = LeaveOneOut(ds, max_len=max_len)
        return cls(ds, loo.train_examples(), loo.eval_examples("valid"), loo.eval_examples("test"))


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


def export_weights(checkpoint: Path | str, dest: Path | str, half: bool = True) -> Path:
    """Weights-only copy of a checkpoint (float16 by default: half the bytes, for moving a trained model
    between machines; `init_from` loads it back as float32)."""
    state = load_checkpoint(checkpoint)
    weights = {k: (v.half() if half and v.is_floating_point() else v) for k, v in state["model"].items()}
    keep = {k: state[k] for k in ("backbone", "model_config", "epoch") if k in state}
    save_checkpoint(dest, {**keep, "model": weights})
    return Path(dest)


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
        self.device = resolve_device(device)
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
        save_checkpoint(self.out / LAST, self._state())

    def _log(self, record: dict[str, Any]) -> None:
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
        if self.cfg.time_budget_s is not None:
            return self.elapsed_s() / self.cfg.time_budget_s
        return self.step / max(1, self.cfg.epochs * n_batches)

    def _batches_per_epoch(self, n_examples: int) -> int:
        return (n_examples + self.cfg.batch_size - 1) // self.cfg.batch_size

    def _warn_if_not_annealed(self, n_examples: int) -> None:
        """Early stopping under a cosine schedule sized to the budget can end the run at a high learning rate;
        measured on Beauty, the fully annealed 45-min HSTU beat the 95-min one stopped at 55% of it (BENCHMARKS.md)."""
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
        """Loss of one mini-batch (rows ``idx`` of the training tensors) and its logged parts ("ce", "item", "aux")."""
        return self.model.loss(hist[idx], tgt[idx])

    def validation_metrics(self, v_hist: np.ndarray, v_tgt: np.ndarray) -> dict[str, float]:
        """Metrics on the validation subset that early stopping watches."""
        return evaluate(self.model, self.trie, v_hist, v_tgt, self.cfg.beam, self.cfg.eval_batch)

    def best_state(self) -> dict[str, Any]:
        """What ``best.pt`` holds: enough to rebuild the model for evaluation and export."""
        return {"backbone": self.backbone, "model_config": self.model_cfg, "model": self.model.state_dict(),
                "epoch": self.epoch}

    def _train_epoch(self, hist: torch.Tensor, tgt: torch.Tensor, deadline: float | None) -> tuple[float, bool]:
        """One pass over the shuffled training examples; returns (mean loss, budget ran out)."""
        self.model.train()
        n, bs = hist.shape[0], self.cfg.batch_size
        n_batches = self._batches_per_epoch(n)
        perm = torch.randperm(n).to(self.device)
        sums: dict[str, float] = {"ce": 0.0}  # every loss part the model reports, shown on the progress bar
        batches, out_of_time = 0, False
        bar = tqdm(range(0, n, bs), desc=f"{self.run_name} epoch {self.epoch + 1}", unit="batch", mininterval=5)
        for start in bar:
            idx = perm[start : start + bs]
            lr = self.cfg.lr * lr_factor(self.cfg, self.step, self._progress(n_batches))
            for group in self.opt.param_groups:
                group["lr"] = lr
            loss, parts = self.batch_loss(idx, hist, tgt)
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
            if deadline is not None and time.monotonic() > deadline:
                out_of_time = True
                break
        bar.close()
        return sums["ce"] / max(batches, 1), out_of_time

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
        hist = torch.as_tensor(self.splits.train[0]).to(self.device)
        tgt = torch.as_tensor(self.splits.train[1]).to(self.device)
        v_hist, v_tgt = self.splits.valid
        v_hist, v_tgt = v_hist[self.valid_subset], v_tgt[self.valid_subset]
        t_run = time.monotonic()
        out_of_time = False
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
            per_epoch = (time.monotonic() - t_run) / max(self.epoch, 1)
            log.info("%s: epoch %d/%d loss %.4f %.1fs | ETA %.1f min (max)", self.run_name, self.epoch,
                     self.cfg.epochs, loss, train_s, per_epoch * (self.cfg.epochs - self.epoch) / 60)
        self.finished = not out_of_time  # a budget stop can be continued later with a larger budget (e.g. on a GPU)
        self._save()
        self.elapsed_before_s, self.t_start = self.elapsed_s(), None

    def _evaluate_and_track(
        self, v_hist: np.ndarray, v_tgt: np.ndarray, loss: float, train_s: float, partial: bool = False
    ) -> None:
        t0 = time.monotonic()
        metrics = self.validation_metrics(v_hist, v_tgt)
        key = f"recall@{min(10, self.cfg.beam)}"
        improved = self.stopper.step(metrics[key], self.epoch)
        if improved:
            save_checkpoint(self.out / BEST, self.best_state())
        record = {"epoch": self.epoch, "partial": partial, "step": self.step, "loss": loss, "train_s": train_s,
                  "eval_s": time.monotonic() - t0, "valid_subset": metrics, "best": self.stopper.best}
        self._log(record)
        log.info("%s: epoch %d val(%d users) %s %.4f%s", self.run_name, self.epoch, len(v_tgt), key,
                 metrics[key], " (best)" if improved else "")
        self._save()

    # -- final evaluation -----------------------------------------------------------------------------------
    def final_evaluation(self, result_path: Path | None = None, progress: bool = True) -> dict[str, Any]:
        """Best weights on the full validation and test splits (beam search), written as a results JSON."""
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


def load_model(path: Path | str, codes: SemanticIds) -> GenerativeBackbone:
    """Rebuild a trained backbone from ``best.pt``/``last.pt`` (for export and the fusion stage)."""
    state = load_checkpoint(path)
    model = build_model(state["backbone"], codes.codes, codes.codebook_sizes, state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval()
