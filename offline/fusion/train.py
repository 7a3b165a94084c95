"""SCoTER training: a TIGER/HSTU backbone with `ReasoningFusion` attached, trained by the backbones' `Trainer`
(same checkpoints, resume, early stopping, time budget) and evaluated with H present and with H removed.

Leakage rule: training prefixes of a user use that user's ``H_train`` (computed from the training part
seq[:-2]); valid and test rows use ``H_valid``/``H_test``. Nothing computed from a validation or test target
enters training.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from offline import distributed
from offline.backbones.beam_search import recommend
from offline.backbones.config import TrainConfig
from offline.backbones.train import BEST, Trainer
from offline.data.datasets import LeaveOneOut
from offline.data.evaluation import rank_metrics, report_ks, subgroup_metrics, write_result
from offline.data.splits import Splits
from offline.fusion.model import FusionConfig, ReasoningFusion
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import load_checkpoint, save_checkpoint
from scoter.h_folder import SPLITS, ReasoningArrays
from scoter.io import describe_output

log = logging.getLogger(__name__)

Backbone = Literal["tiger", "hstu", "sasrec-sid"]


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
        item_text: np.ndarray | None = None,
    ) -> None:
        """``item_text`` [n_items, D]: the catalogue's text embeddings in H's step space, which the vote scores
        items by; None = the packaged sentence encoder's catalogue embeddings when their width is H's D."""
        self.fusion_cfg, self.reasoning, self._item_text = fusion_cfg, reasoning, item_text
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
        self.train_hist: torch.Tensor | None = None  # training prefixes' histories, for train_fn
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
        table = self._vote_table()
        if table is not None:
            self.fusion_cfg = self.fusion_cfg.model_copy(update={"vote_items": len(table) + 1})
        self.model.fusion = ReasoningFusion(self.fusion_cfg).to(self.device)
        if table is not None:
            self.model.fusion.set_item_text(table)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self._fusion_ready = True

    def _vote_table(self) -> np.ndarray | None:
        """The vote's item texts, or None where there is no vote (switched off, or a model without the item-aware
        head, whose code decoder has no per-item score to add to)."""
        if not self.fusion_cfg.vote or self.model.head is None:
            return None
        if self._item_text is not None:
            return np.asarray(self._item_text, np.float32)
        from offline.reasoning.encode import embedding_dim, item_embeddings, sentence_encoder

        width = embedding_dim(sentence_encoder())
        if width != self.fusion_cfg.reasoning_dim:
            log.warning("vote: H has D=%d but the catalogue encoder gives %d; training without the vote",
                        self.fusion_cfg.reasoning_dim, width)
            return None
        return item_embeddings(self.splits.dataset)

    def fit(self) -> None:
        """Train (the base loop), then tune the vote's weight on validation with the best weights."""
        super().fit()
        if self.fusion_cfg.vote_items and self.dist.is_main:
            self.tune_vote()

    def tune_vote(self) -> dict[float, float]:
        """Validation Recall@10 (early stopping's users, H present) for each weight of ``vote_grid`` with the best
        weights; the best weight (ties: the smaller) goes into best.pt. Done once per run."""
        best = self.out / BEST
        state = load_checkpoint(best) if best.exists() else self.best_state()
        if "vote_grid" in state:
            return state["vote_grid"]
        self.model.load_state_dict(state["model"])
        grid: dict[float, float] = {}
        for w in self.fusion_cfg.vote_grid:
            self.model.fusion.vote_weight.fill_(w)
            items, tgt = self.rank("valid", self.valid_subset)
            grid[float(w)] = rank_metrics(items, tgt, (10,))["recall@10"]
        chosen = max(grid, key=lambda w: (grid[w], -w))
        self.model.fusion.vote_weight.fill_(chosen)
        save_checkpoint(best, {**state, "model": self.model.state_dict(), "vote_grid": grid})
        log.info("vote: validation Recall@10 by weight %s -> weight %g; wrote %s", json.dumps(grid), chosen,
                 describe_output(best))
        return grid

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

    def training_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All positions at once (as the backbone trains) when every training prefix has its own H and the model
        has the item-aware head: position t of a row uses the H of the prefix ending at t, which never saw that
        position's target. Otherwise one row per training prefix, the loss at its newest position."""
        if not self.per_position:
            return self.splits.train
        loo = LeaveOneOut(self.splits.dataset, self.model.config.max_len)
        self.prefix_rows = torch.as_tensor(loo.train_sequence_prefix_rows(self.cfg.sub_windows), device=self.device)
        return loo.train_sequence_examples(self.cfg.sub_windows)

    @property
    def per_position(self) -> bool:
        return self.model.all_positions and (self.train_fn is not None or self.H_examples is not None)

    def _prefix_h(self, rows: torch.Tensor) -> torch.Tensor:
        """H of training prefixes (rows of ``splits.train``), any shape of row indices -> [..., K, D]."""
        if self.train_fn is None:
            return self.H_examples[rows]
        if self.train_hist is None:
            self.train_hist = torch.as_tensor(self.splits.train[0], device=self.device)
        H = self.train_fn(self.train_hist[rows.reshape(-1)])
        return H.view(*rows.shape, *H.shape[1:])

    def batch_loss(self, idx: torch.Tensor, hist: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The backbone's loss with H: per-prefix H where there is one (it never saw its own target), else the
        user's training H; InfoNCE and the H dropout live in the model's loss."""
        if self.per_position:
            rows = self.prefix_rows[idx]
            return self.model.sequence_loss(hist[idx], tgt[idx], self._prefix_h(rows.clamp(min=0)), rows >= 0)
        if self.train_fn is not None or self.H_examples is not None:
            H = self._prefix_h(idx)
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
        distributed.barrier()  # best.pt is complete
        if not distributed.is_main():
            return {}  # rank 0 evaluates and writes
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
