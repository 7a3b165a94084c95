"""SCoTER experiments: the plain backbone against SCoTER (H present / H removed) on one dataset, and the
ablation runner (one resumable run per fusion switch, sharing one baseline)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from offline import distributed
from offline.backbones.beam_search import recommend
from offline.backbones.config import TrainConfig
from offline.backbones.train import BEST, LAST, Trainer, build_model, default_codes_path
from offline.data.datasets import LeaveOneOut
from offline.data.evaluation import rank_metrics, report_ks, subgroup_metrics, write_result
from offline.data.splits import Splits
from offline.fusion.model import ABLATIONS, FusionConfig
from offline.fusion.train import Backbone, ScoterTrainer
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import load_checkpoint
from scoter.h_folder import load_reasoning
from scoter.paths import artifacts_root

log = logging.getLogger(__name__)


class ScoterRunConfig(BaseModel):
    """One SCoTER experiment: data, codes, reasoning source, backbone, fusion (+ ablation), training."""

    model_config = ConfigDict(extra="forbid")

    backbone: Backbone = "tiger"
    dataset: str = "beauty"
    data_root: Path | None = None
    max_users: int | None = Field(None, gt=0)
    codes_path: Path | None = Field(None, description="default: artifacts/<dataset>/semantic_ids_rqvae.npz")
    reasoning_dir: Path = Field(description="the H folder from `scoter reason distill` (scoter/h_folder.py)")
    backbone_config: dict[str, Any] | None = None
    fusion: dict[str, Any] = Field(default_factory=dict, description="FusionConfig overrides")
    ablation: str = "full"
    train: TrainConfig = Field(default_factory=TrainConfig)
    out_dir: Path | None = Field(None, description="default: artifacts/<dataset>/scoter-<backbone>")
    baseline_dir: Path | None = Field(None, description="plain backbone run folder; default <out>/baseline")
    init_from_baseline: bool = Field(False, description="warm-start SCoTER from the baseline's best.pt")
    init_from: Path | None = Field(
        None, description="warm-start SCoTER from these backbone weights (an equal-compute comparison starts the "
        "fused model and a continued baseline from the same checkpoint)",
    )
    device: str = "auto"

    def resolved_out(self) -> Path:
        return self.out_dir or artifacts_root() / self.dataset / f"scoter-{self.backbone}"

    def fusion_config(self, reasoning_dim: int, d_item: int) -> FusionConfig:
        base = FusionConfig.tiger if self.backbone == "tiger" else FusionConfig.hstu
        cfg = base(**{"reasoning_dim": reasoning_dim, "d_item": d_item, **self.fusion})
        return FusionConfig.ablation(self.ablation, cfg)


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
    # from the same weights as the fused model (--init-from): an equal-start, equal-budget comparison
    trainer = Trainer(cfg.backbone, splits, codes, out, cfg.train, cfg.backbone_config, device=cfg.device,
                      init_from=cfg.init_from)
    trainer.fit()
    distributed.barrier()  # under torchrun: best.pt is complete; rank 0 alone ranks the test set and writes
    if not distributed.is_main():
        return {}
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
        reasoning = load_reasoning(cfg.reasoning_dir, splits.dataset.user_ids)
        d_item = build_model(cfg.backbone, codes.codes, codes.codebook_sizes, cfg.backbone_config).config.d_model
        init = cfg.init_from or (baseline_dir(cfg) / BEST if cfg.init_from_baseline else None)
        trainer = ScoterTrainer(cfg.backbone, splits, codes, out, cfg.train, cfg.fusion_config(reasoning.D, d_item),
                                reasoning, cfg.backbone_config, cfg.device, init_from=init)
        trainer.fit()
        metrics = trainer.final_evaluation()
        if not metrics:  # a torchrun rank other than 0: rank 0 compares and writes
            return {}
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
