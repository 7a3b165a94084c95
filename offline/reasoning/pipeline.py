"""`scoter reason distill` end to end: teacher chains -> encoder student -> H for every user and split
(and, optionally, the LoRA student's chains for a sample). Every stage skips work whose output exists, and
LLM calls go through the response cache, so a killed run resumes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline.reasoning import corpus, prompts
from offline.reasoning.config import DistillConfig, EncoderStudentConfig, LoraStudentConfig
from offline.reasoning.distill import teacher_chains
from offline.reasoning.encode import (
    chains_to_h,
    history_vectors,
    item_embeddings,
    pooled_cached,
    sentence_encoder,
    unit_rows,
)
from offline.reasoning.llm import LLM
from offline.reasoning.parsing import split_chain
from offline.reasoning.students import EncoderStudent, LoraStudent, student_texts
from scoter import h_folder
from scoter.io import describe_output, read_json, write_json

log = logging.getLogger(__name__)


def split_histories(dataset: Any, split: str) -> list[np.ndarray]:
    return [corpus.history(s, split) for s in dataset.sequences]  # type: ignore[arg-type]


def run_teacher(llm: LLM, dataset: Any, steps: list[str], cfg: DistillConfig, out_dir: Path) -> dict[str, Any]:
    """Teacher chains for `teacher_users` sampled training users -> teacher_chains.json, H_teacher.npy."""
    path = out_dir / ("teacher_chains_oracle.json" if cfg.oracle else "teacher_chains.json")
    saved = read_json(path) if path.exists() else None
    if saved is not None and saved["steps"] != steps:
        log.warning("%s was written for the template %s, not %s: regenerating", path, saved["steps"], steps)
        saved = None
    if saved is not None:  # resume: re-split the saved raw chains so the current rejection rule applies
        for r in saved["records"]:
            r["steps"] = split_chain(r["raw"], saved["steps"])
        rejected = sum(r["steps"] is None for r in saved["records"])
        saved["report"].update(accepted=len(saved["records"]) - rejected, rejected=rejected,
                               rejected_rate=rejected / max(len(saved["records"]), 1))
        if saved["report"].get("seconds"):
            saved["report"]["chains_per_hour"] = saved["report"]["accepted"] / saved["report"]["seconds"] * 3600
        log.info("teacher chains loaded from %s (%d rejected)", path, rejected)
        return saved
    rows = corpus.sample_users(dataset, cfg.teacher_users, cfg.seed + 1)
    records, report = teacher_chains(llm, dataset, steps, rows, cfg)
    out = {"report": report, "steps": steps, "records": records}
    write_json(path, out)
    log.info("wrote %s: %d teacher chains, %d accepted", describe_output(path), len(records), report["accepted"])
    return out


def heldout_split(accepted: list[dict[str, Any]], holdout: float = 0.15) -> tuple[slice, slice]:
    """(held-out, training) slices of the accepted teacher chains: the first `holdout` share is held out, so
    every student is scored on the same users it never saw."""
    n_hold = max(1, int(len(accepted) * holdout))
    return slice(0, n_hold), slice(n_hold, None)


def train_encoder_student(dataset: Any, teacher: dict[str, Any], cfg: EncoderStudentConfig,
                          out_dir: Path, *, holdout: float = 0.15) -> tuple[EncoderStudent, dict[str, Any]]:
    """Fit MiniLM + head on accepted teacher chains (history text -> step embeddings); reports held-out loss."""
    steps = teacher["steps"]
    ok = [r for r in teacher["records"] if r["steps"] is not None]
    if len(ok) < 2:
        raise ValueError(f"encoder student: only {len(ok)} accepted teacher chains; need at least 2")
    torch.set_num_threads(1)
    target, _ = chains_to_h([r["steps"] for r in ok], len(steps))
    import copy

    student = EncoderStudent(copy.deepcopy(sentence_encoder()), len(steps), cfg)
    texts, pooled = _student_inputs(dataset, [r["history"] for r in ok], cfg)
    ho, tr = heldout_split(ok, holdout)
    sub = lambda x, s: None if x is None else x[s]  # noqa: E731
    before = student.evaluate(sub(texts, ho), target[ho], pooled=sub(pooled, ho))
    t0 = time.perf_counter()
    losses = student.fit(sub(texts, tr), target[tr], pooled=sub(pooled, tr))
    after = student.evaluate(sub(texts, ho), target[ho], pooled=sub(pooled, ho))
    pred = student.predict(sub(texts, ho), pooled=sub(pooled, ho))
    report_fid = fidelity(pred, target[ho], target[tr])
    report = {**report_fid, "train_pairs": len(ok[tr]), "heldout_pairs": len(ok[ho]), "epoch_losses": losses,
              "heldout_loss_before": before, "heldout_loss_after": after, "train_seconds": time.perf_counter() - t0}
    torch.save({"head": student.head.state_dict(), "k": len(steps), "steps": list(steps),
                "encoder": student.encoder.state_dict() if cfg.train_encoder else None,  # frozen: the package's
                "config": cfg.model_dump(mode="json")}, out_dir / "encoder_student.pt")
    log.info("encoder student: held-out loss %.4f -> %.4f; wrote %s", before, after,
             describe_output(out_dir / "encoder_student.pt"))
    return student, report


def load_encoder_student(path: Path) -> tuple[EncoderStudent, list[str]]:
    """An encoder student saved by `train_encoder_student` (its head, and its encoder when fine-tuned), and the
    template steps it was trained on."""
    import copy

    from offline.training_utils import load_checkpoint

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found (train it with `scoter reason distill`)")
    ckpt = load_checkpoint(path)
    student = EncoderStudent(copy.deepcopy(sentence_encoder()), int(ckpt["k"]), EncoderStudentConfig(**ckpt["config"]))
    student.head.load_state_dict(ckpt["head"])
    if ckpt.get("encoder") is not None:  # fine-tuned MiniLM; None = the frozen packaged one
        student.encoder.load_state_dict(ckpt["encoder"])
    return student, list(ckpt.get("steps") or [])


def fidelity(pred: np.ndarray, teacher: np.ndarray, train_teacher: np.ndarray) -> dict[str, float]:
    """Held-out fidelity on users the student never saw: the mean per-step cosine of its H to the teacher's,
    next to the same cosine for the training chains' mean H (what a student that ignores the history would
    score), and how well its H picks out the user's own teacher chain among the other held-out users'."""
    t = unit_rows(teacher)
    c = (unit_rows(pred) * t).sum(-1).mean(axis=1)
    base = (unit_rows(train_teacher.mean(axis=0)) * t).sum(-1).mean(axis=1)
    auc = own_chain_auc(pred, teacher)
    n = max(len(c), 1)
    se = lambda x: float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0  # noqa: E731
    return {"heldout_cosine": float(c.mean()), "heldout_cosine_se": se(c),
            "heldout_cosine_mean_baseline": float(base.mean()), "heldout_cosine_gain_se": se(c - base),
            "heldout_own_chain_auc": float(auc.mean()), "heldout_own_chain_auc_se": se(auc)}


def own_chain_auc(pred: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Per user, the share of the other users' teacher steps less similar to its predicted step than its own
    teacher step is (ties count half), averaged over the steps. Over users it averages 0.5 for any H that is the
    same for everyone (the mean H), and is 1.0 when every user's H is nearest its own chain; cosine alone cannot
    tell these apart (a contrastive student gives up some cosine to pick out its own user)."""
    n, k, _ = teacher.shape
    if n < 2:
        return np.full(n, 0.5)
    p, t = unit_rows(pred), unit_rows(teacher)
    out = np.zeros(n)
    for j in range(k):
        sim = p[:, j] @ t[:, j].T  # [n users' predictions, n users' teacher steps]
        own = np.diag(sim)[:, None]
        below = (sim < own - 1e-6).sum(1)
        ties = (np.abs(sim - own) <= 1e-6).sum(1) - 1  # the own chain itself is not a tie
        out += (below + 0.5 * ties) / (n - 1)
    return out / k


def _student_inputs(dataset: Any, histories: list, cfg: EncoderStudentConfig) -> tuple[list[str] | None,
                                                                                    np.ndarray | None]:
    """(texts, None) for the text student; (None, history vectors) for the item-embedding student."""
    if cfg.history_input == "items":
        return None, history_vectors(histories, item_embeddings(dataset), max_items=cfg.history_items,
                                     decay=cfg.recency_decay)
    return student_texts(dataset, histories, cfg.history_items), None


def precompute_h(student: EncoderStudent, dataset: Any, out_dir: Path, cfg: EncoderStudentConfig) -> dict[str, Any]:
    """H_{train,valid,test}.npy for every user (train and valid share the input seq[:-2], computed once)."""
    times = {}
    cached: dict[str, np.ndarray] = {}
    for split in corpus.SPLITS:
        key = "test" if split == "test" else "train_valid"
        if h_folder.h_path(out_dir, split).exists():
            continue
        t0 = time.perf_counter()
        if key not in cached:
            texts, pooled = _student_inputs(dataset, split_histories(dataset, split), cfg)
            if pooled is None and not cfg.train_encoder:
                pooled = pooled_cached(texts, max_seq_length=cfg.max_seq_length, batch_size=cfg.encode_batch_size)
            cached[key] = student.predict(texts, progress=True, pooled=pooled)
        h = cached[key]
        h_folder.write_split(out_dir, split, h)
        times[split] = time.perf_counter() - t0
        log.info("H_%s: %d users in %.0fs (%.1f users/s)", split, len(h), times[split],
                 len(h) / max(times[split], 1e-9))
    if cfg.history_input == "items" and not (out_dir / h_folder.TRAIN_EXAMPLES).exists():
        # Per-prefix H for the training rows (LeaveOneOut.train_examples order): a prefix's H must not see its
        # own target, which the per-user H_train (input seq[:-2]) does for every earlier prefix.
        t0 = time.perf_counter()
        prefixes = [s[:t] for s in (seq[:-2] for seq in dataset.sequences) for t in range(1, len(s))]
        _, pooled = _student_inputs(dataset, prefixes, cfg)
        h = student.predict(None, progress=True, pooled=pooled).astype(np.float16)
        h_folder.write_train_examples(out_dir, h)
        times["train_examples"] = time.perf_counter() - t0
        log.info("H_train_examples: %d prefixes in %.0fs", len(h), times["train_examples"])
    h_folder.write_user_ids(out_dir, dataset.user_ids)
    return {"seconds_by_split": times, "users": dataset.n_users}


def run_lora_student(dataset: Any, teacher: dict[str, Any], cfg: LoraStudentConfig, dcfg: DistillConfig,
                     out_dir: Path, *, sample_users: int) -> dict[str, Any]:
    """The paper's student: LoRA on the teacher's chains, then chains for `sample_users` users in every split."""
    steps = teacher["steps"]
    ok = [r for r in teacher["records"] if r["steps"] is not None]
    if not ok:
        raise ValueError("LoRA student: no accepted teacher chains")
    chat = lambda hist: prompts.distill_chat(steps, corpus.texts(dataset, hist), max_items=dcfg.history_items)  # noqa: E731
    student = LoraStudent(cfg)
    losses = student.fit([chat(r["history"]) for r in ok], [prompts.format_chain(steps, r["steps"]) for r in ok])
    train_tps = student.train_tokens / max(student.train_seconds, 1e-9)
    student.save(out_dir / "lora_adapter")
    rows = corpus.sample_users(dataset, sample_users, dcfg.seed + 2)
    report: dict[str, Any] = {"train_steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
                              "losses": losses, "train_tokens_per_second": train_tps,
                              "train_seconds": student.train_seconds, "rows": rows, "splits": {}}
    sub = out_dir / "llm_student"
    done: dict[str, tuple[list, dict]] = {}
    for split in corpus.SPLITS:
        key = "test" if split == "test" else "train_valid"
        if key not in done:
            chats = [chat(corpus.history(dataset.sequences[u], split)) for u in rows]  # type: ignore[arg-type]
            done[key] = student.write_chains(chats, steps)
        chains, rep = done[key]
        h, present = chains_to_h(chains, len(steps))
        h_folder.write_split(sub, split, h, present)
        report["splits"][split] = rep
    h_folder.write_user_ids(sub, [dataset.user_ids[u] for u in rows])
    write_json(sub / "chains_test.json", [{"user": dataset.user_ids[u], "steps": c}
                                          for u, c in zip(rows, done["test"][0], strict=True)])
    log.info("LoRA student chains: wrote %s", describe_output(sub))
    return report


def write_meta(out_dir: Path, dataset: Any, steps: list[str], extra: dict[str, Any]) -> None:
    h, _ = h_folder.read_split(out_dir, "test")
    h_folder.write_meta(out_dir, {
        "dataset": dataset.name, "data_checksum": dataset.checksum, "users": dataset.n_users,
        "K": int(h.shape[1]), "D": int(h.shape[2]), "template": steps, "student": "encoder (MiniLM + head)",
        "inputs": {"train": "seq[:-2]", "valid": "seq[:-2]", "test": "seq[:-1]"},
        "user_order": "user_ids.json == Dataset.user_ids == LeaveOneOut.user_index", **extra,
    })  # h_folder.write_meta logs the folder with its size, K and D
