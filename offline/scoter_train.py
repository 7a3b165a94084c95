"""SCoTER training and evaluation: a TIGER/HSTU backbone with `ReasoningFusion` attached, trained by the
backbones' `Trainer` (same checkpoints, resume, early stopping, time budget), evaluated with H present and with
H removed at test time next to the plain backbone; plus the ablation runner.

Leakage rule: training prefixes of a user use that user's ``H_train`` (computed from the training part
seq[:-2]); valid and test rows use ``H_valid``/``H_test``. Nothing computed from a validation or test target
enters training.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from offline.backbones.base import GenerativeBackbone
from offline.backbones.beam_search import recommend
from offline.backbones.config import TrainConfig
from offline.backbones.train import BEST, LAST, Splits, Trainer, build_model, default_codes_path
from offline.data import Dataset, LeaveOneOut
from offline.evaluation import rank_metrics, report_ks, subgroup_metrics, write_result
from offline.fusion import ABLATIONS, FusionConfig, ReasoningFusion
from offline.semantic_ids import SemanticIds
from offline.training_utils import load_checkpoint
from scoter.paths import artifacts_root

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
Backbone = Literal["tiger", "hstu"]


# -- reasoning arrays -----------------------------------------------------------------------------------------
@dataclass
class ReasoningArrays:
    """Per-user H for each split ([n_users, K, D] float32, rows aligned with ``Dataset.user_ids``) and presence."""

    H: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    source: str
    train_fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # H from a training prefix itself
    # H per training example ([N_train, K, D], rows of LeaveOneOut.train_examples()), leak-free per prefix
    train_examples: np.ndarray | None = None

    @property
    def K(self) -> int:
        return int(self.H["test"].shape[1])

    @property
    def D(self) -> int:
        return int(self.H["test"].shape[2])

    def coverage(self) -> dict[str, float]:
        return {s: float(self.present[s].mean()) if len(self.present[s]) else 0.0 for s in SPLITS}


def _rows_for_users(folder: Path, user_ids: list[str], n_rows: int) -> np.ndarray:
    """Row of each dataset user in the reasoning files (-1 = not there). Uses user_ids.json when present,
    else assumes the files start with the dataset's users in order (Dataset.subset keeps the first N)."""
    ids_path = folder / "user_ids.json"
    if ids_path.exists():
        try:
            stored = json.loads(ids_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ids_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        if len(stored) != n_rows:
            raise ValueError(f"{ids_path}: {len(stored)} user ids but H files have {n_rows} rows")
        where = {str(u): i for i, u in enumerate(stored)}
        return np.array([where.get(str(u), -1) for u in user_ids], dtype=np.int64)
    if n_rows < len(user_ids):
        raise ValueError(
            f"{folder}: H files have {n_rows} rows for {len(user_ids)} users and no user_ids.json"
        )
    return np.arange(len(user_ids), dtype=np.int64)


def load_reasoning(folder: Path | str, user_ids: list[str], source: str | None = None) -> ReasoningArrays:
    """Read H_{train,valid,test}.npy (+ present_{split}.npy, user_ids.json) written by offline/reasoning."""
    folder = Path(folder)
    H: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    shape: tuple[int, int] | None = None
    for split in SPLITS:
        path = folder / f"H_{split}.npy"
        if not path.exists():
            raise FileNotFoundError(f"reasoning: {path} not found (need H_train/H_valid/H_test.npy)")
        h = np.load(path, mmap_mode="r")
        if h.ndim != 3:
            raise ValueError(f"{path}: expected [users, K, D], got shape {h.shape}")
        if shape is not None and h.shape[1:] != shape:
            raise ValueError(f"{path}: K, D = {h.shape[1:]} differ from the other splits' {shape}")
        shape = h.shape[1:]
        p_path = folder / f"present_{split}.npy"
        p = np.load(p_path).astype(bool) if p_path.exists() else np.ones(len(h), bool)
        if p.shape != (len(h),):
            raise ValueError(f"{p_path}: expected [{len(h)}] flags, got shape {p.shape}")
        rows = _rows_for_users(folder, user_ids, len(h))
        found = rows >= 0
        out = np.zeros((len(user_ids), *h.shape[1:]), np.float32)
        out[found] = np.asarray(h[rows[found]], dtype=np.float32)
        pres = np.zeros(len(user_ids), bool)
        pres[found] = p[rows[found]]
        bad = pres & ~np.isfinite(out).all(axis=(1, 2))
        if bad.any():
            raise ValueError(
                f"{path}: non-finite H for {int(bad.sum())} users marked present (first row "
                f"{int(rows[np.argmax(bad)])})"
            )
        H[split], present[split] = out, pres
    per_example = folder / "H_train_examples.npy"
    train_examples = None
    if per_example.exists():
        if (folder / "user_ids.json").exists() and json.loads((folder / "user_ids.json").read_text())[
            : len(user_ids)
        ] != list(user_ids):
            raise ValueError(f"{per_example}: rows follow user_ids.json, which does not start with this dataset's users")
        train_examples = np.load(per_example, mmap_mode="r")
        if train_examples.ndim != 3 or train_examples.shape[1:] != H["test"].shape[1:]:
            raise ValueError(f"{per_example}: expected [examples, {H['test'].shape[1]}, {H['test'].shape[2]}], "
                             f"got {train_examples.shape}")
    return ReasoningArrays(H, present, source or f"dir:{folder}", train_examples=train_examples)


def save_reasoning(folder: Path | str, arrays: ReasoningArrays, user_ids: list[str]) -> None:
    """Write arrays in the reasoning pipeline's layout, each file atomically (temp file, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def atomic(path: Path, write: Any) -> None:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)

    for split in SPLITS:
        atomic(folder / f"H_{split}.npy", lambda f, s=split: np.save(f, arrays.H[s]))
        atomic(folder / f"present_{split}.npy", lambda f, s=split: np.save(f, arrays.present[s]))
    atomic(folder / "user_ids.json", lambda f: f.write(json.dumps(list(user_ids)).encode()))
    atomic(
        folder / "meta.json",
        lambda f: f.write(json.dumps({"source": arrays.source, "K": arrays.K, "D": arrays.D}).encode()),
    )


def next_item_table(train_sequences: list[np.ndarray], n_items: int) -> np.ndarray:
    """Most frequent successor of each item in the training parts only ([n_items + 1], 0 = none seen; ties go
    to the lower item index)."""
    pairs = (
        np.concatenate([np.stack([s[:-1], s[1:]], 1) for s in train_sequences if len(s) > 1])
        if any(len(s) > 1 for s in train_sequences)
        else np.zeros((0, 2), np.int64)
    )
    table = np.zeros(n_items + 1, np.int64)
    if len(pairs) == 0:
        return table
    keys, counts = np.unique(pairs, axis=0, return_counts=True)
    # sort by (prev asc, count desc, next asc) and keep the first row of each prev
    order = np.lexsort((keys[:, 1], -counts, keys[:, 0]))
    keys = keys[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:, 0] != keys[:-1, 0]
    table[keys[first, 0]] = keys[first, 1]
    return table


class HistoryTextReasoner:
    """DEVELOPMENT STAND-IN for the student's H, computed from a history alone (so it is leak-free for every
    training prefix, unlike a per-user H): steps 1..K-1 are mean item-text vectors of the history in K-1
    time-ordered chunks (oldest first, ``np.array_split`` sizes), step K is the text vector of the most frequent
    successor, in the training parts only, of the newest history item (the item itself if it has none)."""

    def __init__(self, item_vectors: np.ndarray, successor: np.ndarray, steps: int = 4) -> None:
        if steps < 2:
            raise ValueError(f"steps: need >= 2 (history chunks + successor step), got {steps}")
        if successor.shape[0] != item_vectors.shape[0]:
            raise ValueError(f"successor: {successor.shape[0]} rows for {item_vectors.shape[0]} item vectors")
        self.vec = torch.as_tensor(np.asarray(item_vectors, np.float32))
        self.succ = torch.as_tensor(np.asarray(successor, np.int64))
        self.steps = steps

    def to(self, device: torch.device | str) -> HistoryTextReasoner:
        self.vec, self.succ = self.vec.to(device), self.succ.to(device)
        return self

    @torch.no_grad()
    def __call__(self, hist: torch.Tensor) -> torch.Tensor:
        """hist [B,T] left-padded item ids -> H [B,K,D]."""
        B, T = hist.shape
        m = self.steps - 1
        valid = hist > 0
        n = valid.sum(1)
        i = torch.arange(T, device=hist.device)[None] - (T - n)[:, None]  # index among real items
        q, r = n // m, n % m
        big = (r * (q + 1))[:, None]
        chunk = torch.where(i < big, i // (q + 1)[:, None], r[:, None] + (i - big) // q.clamp(min=1)[:, None])
        chunk = torch.where(valid, chunk, torch.full_like(chunk, m))
        onehot = torch.nn.functional.one_hot(chunk, m + 1)[..., :m].float()  # [B,T,m]
        v = self.vec[hist]
        counts = onehot.sum(1)
        mean_all = (v * valid[..., None]).sum(1) / n.clamp(min=1)[:, None]
        chunks = torch.where(
            counts[..., None] > 0,
            onehot.transpose(1, 2) @ v / counts.clamp(min=1)[..., None],
            mean_all[:, None],
        )
        last = hist[:, -1]
        nxt = self.succ[last]
        return torch.cat([chunks, self.vec[torch.where(nxt > 0, nxt, last)][:, None]], dim=1)


def history_text_reasoning(
    dataset: Dataset, item_vectors: np.ndarray, steps: int = 4, max_len: int = 20
) -> ReasoningArrays:
    """Arrays of the history_text stand-in for every split (train/valid: seq[:-2], test: seq[:-1], the reasoning
    pipeline's inputs) plus ``train_fn`` so training prefixes get H from their own prefix."""
    if item_vectors.shape[0] != dataset.n_items + 1:
        raise ValueError(
            f"item_vectors: expected {dataset.n_items + 1} rows (row 0 = pad), got {item_vectors.shape[0]}"
        )
    loo = LeaveOneOut(dataset, max_len=max_len)
    fn = HistoryTextReasoner(item_vectors, next_item_table(loo.train_sequences(), dataset.n_items), steps)
    H: dict[str, np.ndarray] = {}
    for split in ("valid", "test"):
        hist = torch.as_tensor(loo.eval_examples(split)[0])
        H[split] = torch.cat([fn(hist[i : i + 4096]) for i in range(0, len(hist), 4096)]).numpy()
    H["train"] = H["valid"]  # same input (seq[:-2]); used only if train_fn is dropped
    present = {s: np.ones(dataset.n_users, bool) for s in SPLITS}
    return ReasoningArrays(H, present, f"history_text(K={steps}, training-only signal; NOT student H)", fn)


# -- trainer --------------------------------------------------------------------------------------------------
class ScoterTrainer(Trainer):
    """The backbones' Trainer with a ReasoningFusion attached to the model and H fed to loss and beam search.
    Early stopping tracks validation Recall@10 with H present."""

    def __init__(
        self,
        backbone: Backbone,
        splits: Splits,
        codes: SemanticIds,
        out_dir: Path,
        train_cfg: TrainConfig,
        fusion_cfg: FusionConfig,
        reasoning: ReasoningArrays,
        model_cfg: dict[str, Any] | None = None,
        device: str = "auto",
        init_from: Path | None = None,
    ) -> None:
        self.fusion_cfg, self.reasoning = fusion_cfg, reasoning
        n_users = splits.dataset.n_users
        for s in SPLITS:
            if reasoning.H[s].shape[0] != n_users:
                raise ValueError(f"reasoning: H_{s} has {reasoning.H[s].shape[0]} rows for {n_users} users")
        if reasoning.D != fusion_cfg.reasoning_dim:
            raise ValueError(f"fusion.reasoning_dim: {fusion_cfg.reasoning_dim} but H has D={reasoning.D}")
        self._fusion_ready = False
        # init_from: the backbones' Trainer loads a plain backbone's weights before the fusion is attached
        super().__init__(backbone, splits, codes, out_dir, train_cfg, model_cfg, device, init_from=init_from)
        self._attach_fusion()
        user_of = LeaveOneOut(splits.dataset).train_user_of_examples()
        if len(user_of) != len(splits.train[1]):
            raise ValueError(f"train examples: {len(splits.train[1])} rows but {len(user_of)} user indices")
        self.train_user = torch.as_tensor(user_of, device=self.device)
        self.H = {s: torch.as_tensor(reasoning.H[s], dtype=torch.float32, device=self.device) for s in SPLITS}
        self.train_fn = reasoning.train_fn
        self.H_examples = None
        if reasoning.train_examples is not None and self.train_fn is None:
            n_ex = len(splits.train[1])
            if reasoning.train_examples.shape[0] < n_ex:
                raise ValueError(f"reasoning: H_train_examples has {reasoning.train_examples.shape[0]} rows for "
                                 f"{n_ex} training examples")
            self.H_examples = torch.as_tensor(np.array(reasoning.train_examples[:n_ex], np.float32),
                                              device=self.device)
        if self.train_fn is not None and hasattr(self.train_fn, "to"):
            self.train_fn = self.train_fn.to(self.device)
        if self.train_fn is None and self.H_examples is None:
            log.warning(
                "training prefixes use the per-user H_train (input seq[:-2]): it saw every training "
                "target, which test-time H never does; per-prefix H avoids this mismatch"
            )
        self.present = {s: torch.as_tensor(reasoning.present[s], device=self.device) for s in SPLITS}

    def _attach_fusion(self) -> None:
        """Add the fusion module and rebuild the optimiser over all parameters (once, before any resume)."""
        if self._fusion_ready:
            return
        d = self.model.config.d_model
        if self.fusion_cfg.d_item != d:
            raise ValueError(
                f"fusion.d_item: {self.fusion_cfg.d_item} but the {self.backbone} encoder width is {d}"
            )
        self.model.fusion = ReasoningFusion(self.fusion_cfg).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self._fusion_ready = True

    def _resume(self) -> None:
        self._attach_fusion()
        super()._resume()

    def _state(self) -> dict[str, Any]:
        state = super()._state()
        # reasoning_steps: K of the H this model was trained with; the exporter sizes the graph's input by it
        state.update(fusion_config=self.fusion_cfg.model_dump(), reasoning_source=self.reasoning.source,
                     reasoning_steps=int(self.reasoning.K))
        return state

    @property
    def run_name(self) -> str:
        return f"scoter-{self.backbone}"

    def batch_loss(self, idx: torch.Tensor, hist: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The backbone's loss with H: per-prefix H where there is one (it never saw its own target), else the
        user's training H; InfoNCE and the H dropout live in the model's loss."""
        if self.train_fn is not None or self.H_examples is not None:
            H = self.train_fn(hist[idx]) if self.train_fn is not None else self.H_examples[idx]
            present = torch.ones(len(idx), dtype=torch.bool, device=self.device)
        else:
            users = self.train_user[idx]
            H, present = self.H["train"][users], self.present["train"][users]
        return self.model.loss(hist[idx], tgt[idx], H, present)

    def rank(
        self, split: str, rows: np.ndarray | None = None, with_h: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-beam items for valid/test rows, with H (as stored) or with every user's H removed."""
        hist, tgt = self.splits.valid if split == "valid" else self.splits.test
        rows = np.arange(len(tgt)) if rows is None else rows
        sel = torch.as_tensor(rows, device=self.device)
        H, present = self.H[split][sel].cpu(), self.present[split][sel].cpu()  # recommend() batches on host
        if not with_h:
            present = torch.zeros_like(present)
        items, _ = recommend(
            self.model,
            hist[rows],
            self.cfg.beam,
            self.trie,
            beam=self.cfg.beam,
            batch_size=self.cfg.eval_batch,
            reasoning=H,
            present=present,
        )
        return items, tgt[rows]

    def validation_metrics(self, v_hist: np.ndarray, v_tgt: np.ndarray) -> dict[str, float]:
        """Early stopping watches validation with H present (the subset the base loop passes in)."""
        items, tgt = self.rank("valid", self.valid_subset)
        return rank_metrics(items, tgt, ks=tuple(sorted({min(x, self.cfg.beam) for x in (5, 10, 20)})))

    def best_state(self) -> dict[str, Any]:
        # reasoning_steps: K of the H this model was trained with; the exporter sizes the graph's input by it
        return {**super().best_state(), "fusion_config": self.fusion_cfg.model_dump(),
                "reasoning_steps": int(self.reasoning.K)}

    def final_evaluation(self, result_path: Path | None = None, progress: bool = True) -> dict[str, Any]:
        """Best weights on full valid (H) and test (H present / H removed), with subgroup breakdowns."""
        if (self.out / BEST).exists():
            self.model.load_state_dict(load_checkpoint(self.out / BEST)["model"])
        t0 = time.monotonic()
        loo = LeaveOneOut(self.splits.dataset)
        ks = report_ks(self.cfg.beam)
        metrics: dict[str, Any] = {}
        for name, split, with_h in (
            ("valid", "valid", True),
            ("test", "test", True),
            ("test_h_absent", "test", False),
        ):
            items, tgt = self.rank(split, with_h=with_h)
            metrics[name] = rank_metrics(items, tgt, ks)
            if split == "test":
                metrics[f"{name}_subgroups"] = subgroup_metrics(
                    items, tgt, loo.sequence_lengths(), loo.train_item_counts(), ks
                )
        log.info(
            "scoter-%s final: test %s | H absent %s",
            self.backbone,
            json.dumps(metrics["test"]),
            json.dumps(metrics["test_h_absent"]),
        )
        write_result(
            result_path or self.out / "result.json",
            metrics,
            {
                "backbone": self.backbone,
                "model": self.model_cfg,
                "fusion": self.fusion_cfg.model_dump(),
                "train": self.cfg.model_dump(),
                "reasoning_source": self.reasoning.source,
            },
            self.cfg.seed,
            self.splits.dataset,
            elapsed_s=time.monotonic() - t0,
            epochs_trained=self.epoch,
            best_epoch=self.stopper.best_epoch,
            device=str(self.device),
            reasoning_coverage=self.reasoning.coverage(),
            parameters=sum(p.numel() for p in self.model.parameters()),
            fusion_parameters=sum(p.numel() for p in self.model.fusion.parameters()),
        )
        return metrics


def load_scoter_model(path: Path | str, codes: SemanticIds) -> GenerativeBackbone:
    """Rebuild a trained SCoTER model (backbone + fusion) from its best.pt/last.pt (for export)."""
    state = load_checkpoint(path)
    if "fusion_config" not in state:
        raise ValueError(f"{path}: no fusion_config; this is a plain backbone checkpoint")
    model = build_model(state["backbone"], codes.codes, codes.codebook_sizes, state["model_config"])
    model.fusion = ReasoningFusion(FusionConfig(**state["fusion_config"]))
    model.load_state_dict(state["model"])
    return model.eval()


# -- experiment: backbone vs SCoTER (H present / absent) --------------------------------------------------------
class ScoterRunConfig(BaseModel):
    """One SCoTER experiment: data, codes, reasoning source, backbone, fusion (+ ablation), training."""

    model_config = ConfigDict(extra="forbid")

    backbone: Backbone = "tiger"
    dataset: str = "beauty"
    data_root: Path | None = None
    max_users: int | None = Field(None, gt=0)
    codes_path: Path | None = Field(None, description="default: artifacts/<dataset>/semantic_ids_rqvae.npz")
    reasoning_dir: Path | None = Field(
        None, description="H_{split}.npy folder; None -> history_text stand-in"
    )
    dev_steps: int = Field(4, ge=2, description="K of the history_text stand-in")
    backbone_config: dict[str, Any] | None = None
    fusion: dict[str, Any] = Field(default_factory=dict, description="FusionConfig overrides")
    ablation: str = "full"
    train: TrainConfig = Field(default_factory=TrainConfig)
    out_dir: Path | None = Field(None, description="default: artifacts/<dataset>/scoter-<backbone>")
    baseline_dir: Path | None = Field(None, description="plain backbone run folder; default <out>/baseline")
    init_from_baseline: bool = Field(False, description="warm-start SCoTER from the baseline's best.pt")
    device: str = "auto"

    def resolved_out(self) -> Path:
        return self.out_dir or artifacts_root() / self.dataset / f"scoter-{self.backbone}"

    def fusion_config(self, reasoning_dim: int, d_item: int) -> FusionConfig:
        base = FusionConfig.tiger if self.backbone == "tiger" else FusionConfig.hstu
        cfg = base(**{"reasoning_dim": reasoning_dim, "d_item": d_item, **self.fusion})
        return FusionConfig.ablation(self.ablation, cfg)


def item_text_vectors(dataset: Dataset) -> np.ndarray:
    """[n_items + 1, 384] item text embeddings (row 0 = zeros), from the cached ItemEmbedder."""
    from offline.embeddings import EmbeddingConfig, ItemEmbedder

    vec = ItemEmbedder(EmbeddingConfig()).encode_items(dataset)
    return np.concatenate([np.zeros((1, vec.shape[1]), np.float32), vec.astype(np.float32)])


def resolve_reasoning(cfg: ScoterRunConfig, dataset: Dataset) -> ReasoningArrays:
    if cfg.reasoning_dir is not None:
        return load_reasoning(cfg.reasoning_dir, dataset.user_ids)
    log.warning(
        "no reasoning_dir: using the history_text DEVELOPMENT stand-in (training-only signal), "
        "not the reasoning pipeline's student H"
    )
    return history_text_reasoning(dataset, item_text_vectors(dataset), cfg.dev_steps)


def relative(a: dict[str, float], b: dict[str, float]) -> dict[str, float | None]:
    """Relative change of a over b per metric (0.1 = +10%); None where b is 0 (undefined)."""
    return {k: (a[k] - b[k]) / b[k] if b.get(k) else None for k in a if k in b}


def baseline_dir(cfg: ScoterRunConfig) -> Path:
    """The plain backbone's run folder: --baseline, else <out>/baseline (so subsets never share one)."""
    return cfg.baseline_dir or cfg.resolved_out() / "baseline"


def run_baseline(cfg: ScoterRunConfig, splits: Splits, codes: SemanticIds) -> dict[str, Any]:
    """Train (or resume / reuse) the plain backbone with the same loop and budget; returns its test metrics
    with subgroups."""
    out = baseline_dir(cfg)
    result = out / "result_subgroups.json"
    if result.exists():
        doc = json.loads(result.read_text())
        if doc["dataset"]["checksum"] != splits.dataset.checksum:
            raise ValueError(
                f"{result}: baseline was run on {doc['dataset']['name']}, not {splits.dataset.name}"
            )
        return doc["metrics"]
    trainer = Trainer(cfg.backbone, splits, codes, out, cfg.train, cfg.backbone_config, device=cfg.device)
    trainer.fit()
    if (out / BEST).exists():
        trainer.model.load_state_dict(load_checkpoint(out / BEST)["model"])
    loo = LeaveOneOut(splits.dataset)
    items, _ = recommend(
        trainer.model,
        splits.test[0],
        cfg.train.beam,
        trainer.trie,
        beam=cfg.train.beam,
        batch_size=cfg.train.eval_batch,
    )
    ks = report_ks(cfg.train.beam)
    metrics = {
        "test": rank_metrics(items, splits.test[1], ks),
        "test_subgroups": subgroup_metrics(
            items, splits.test[1], loo.sequence_lengths(), loo.train_item_counts(), ks
        ),
    }
    write_result(
        result,
        metrics,
        {"backbone": cfg.backbone, "model": trainer.model_cfg, "train": cfg.train.model_dump()},
        cfg.train.seed,
        splits.dataset,
        epochs_trained=trainer.epoch,
        best_epoch=trainer.stopper.best_epoch,
    )
    return metrics


def _final_result(out: Path, splits: Splits) -> dict[str, Any] | None:
    """A run's final evaluation (result.json) when it is newer than its best weights: metrics plus
    epochs_trained and reasoning_source, so a rerun that only combines results does not rank the test set again."""
    result, best = out / "result.json", out / BEST
    if not result.exists() or (best.exists() and best.stat().st_mtime > result.stat().st_mtime):
        return None
    doc = json.loads(result.read_text())
    if doc["dataset"]["checksum"] != splits.dataset.checksum:
        return None
    return doc


def run_baseline_only(cfg: ScoterRunConfig) -> dict[str, Any]:
    """Train and test just the plain backbone of a SCoTER run (so it can run beside the fused model)."""
    codes = SemanticIds.load(cfg.codes_path or default_codes_path(cfg.dataset))
    splits = Splits.load(cfg.dataset, max_users=cfg.max_users, root=cfg.data_root)
    return run_baseline(cfg, splits, codes)


def run_scoter(cfg: ScoterRunConfig, with_baseline: bool = True, reuse_final: bool = False) -> dict[str, Any]:
    """Backbone vs SCoTER on one dataset: writes <out>/comparison.json and returns it.

    A finished run is never retrained and its final evaluation is reused. ``reuse_final`` also reuses the final
    evaluation of a run stopped by its time budget (which a plain rerun would continue training): for combining
    runs trained elsewhere or in parallel."""
    codes = SemanticIds.load(cfg.codes_path or default_codes_path(cfg.dataset))
    splits = Splits.load(cfg.dataset, max_users=cfg.max_users, root=cfg.data_root)
    baseline = run_baseline(cfg, splits, codes) if with_baseline else None
    out = cfg.resolved_out()
    final = _final_result(out, splits) if reuse_final or has_finished(out) else None
    if final is None:
        reasoning = resolve_reasoning(cfg, splits.dataset)
        d_item = build_model(cfg.backbone, codes.codes, codes.codebook_sizes, cfg.backbone_config).config.d_model
        init = baseline_dir(cfg) / BEST if cfg.init_from_baseline else None
        trainer = ScoterTrainer(cfg.backbone, splits, codes, out, cfg.train, cfg.fusion_config(reasoning.D, d_item),
                                reasoning, cfg.backbone_config, cfg.device, init_from=init)
        trainer.fit()
        metrics = trainer.final_evaluation()
        source, epochs = reasoning.source, trainer.epoch
    else:
        log.info("%s: reusing the final evaluation in %s", cfg.backbone, out / "result.json")
        metrics, source, epochs = final["metrics"], final["config"]["reasoning_source"], final["epochs_trained"]
    doc: dict[str, Any] = {
        "scoter_test": metrics["test"],
        "scoter_test_h_absent": metrics["test_h_absent"],
        "scoter_test_subgroups": metrics["test_subgroups"],
        "ablation": cfg.ablation,
        "reasoning_source": source,
        "epochs_trained": epochs,
    }
    if baseline is not None:
        doc.update(
            backbone_test=baseline["test"],
            backbone_test_subgroups=baseline["test_subgroups"],
            gain_h_present=relative(metrics["test"], baseline["test"]),
            gain_h_absent=relative(metrics["test_h_absent"], baseline["test"]),
        )
    write_result(out / "comparison.json", doc, cfg, cfg.train.seed, splits.dataset)
    return doc


def run_ablations(cfg: ScoterRunConfig, names: list[str] | None = None) -> dict[str, Any]:
    """Each ablation as its own resumable SCoTER run under <out>/ablation-<name>, sharing one baseline."""
    names = names or list(ABLATIONS)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"ablations: unknown {unknown}; choose from {sorted(ABLATIONS)}")
    base_out = cfg.resolved_out()
    results = {}
    for name in names:
        sub = cfg.model_copy(
            update={
                "ablation": name,
                "out_dir": base_out / f"ablation-{name}",
                "baseline_dir": baseline_dir(cfg),
            }
        )
        log.info("ablation %s -> %s", name, sub.out_dir)
        results[name] = run_scoter(sub)
    return results


def has_finished(out_dir: Path) -> bool:
    """True when a SCoTER run folder holds a finished training state."""
    last = Path(out_dir) / LAST
    return last.exists() and bool(load_checkpoint(last).get("finished"))
