"""Reasoning-source ablations: H folders derived from one real H folder (a `--stage teacher` output of
benchmarks/reasoning.py), each run by benchmarks.teacher_curve as an `--h-folder` point, to tell where a SCoTER
gain (or loss) comes from:

  shuffled  the real H with its rows permuted across users (and across training prefixes): the same vectors,
            no longer the user's own
  constant  every row the mean training H: a fixed input, so whatever the fusion learns from it is a bias
  untuned   the encoder student before training (its random head on the same inputs): no teacher at all
  facts     chains written from the grounding facts alone (no LLM: profile, recent items, top co-occurrence
            candidate) for the same teacher rows, through the same student -> H path

    python -m benchmarks.h_sources --real artifacts/beauty/reasoning_real --out artifacts/beauty/h_sources

Nothing here reads a validation or test target: the facts come from each teacher row's history, and the
student maps histories to H as the real one does.
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline.reasoning import corpus, pipeline
from offline.reasoning.config import EncoderStudentConfig
from offline.reasoning.encode import sentence_encoder
from offline.reasoning.grounding import Grounding
from offline.reasoning.students import EncoderStudent
from offline.training_utils import load_checkpoint
from scoter import h_folder
from scoter.io import read_json

log = logging.getLogger("h_sources")
SOURCES = ("shuffled", "constant", "untuned", "facts")


def facts_chain(g: Grounding, history: list[int], k: int) -> list[str]:
    """A K-step chain made of grounding facts only: profile, recent items, then the top co-occurrence
    candidate as the recommendation (middle steps repeat the recent items when K > 3)."""
    profile = g.render_profile(history) or "no profile"
    recent = "; ".join(g.item_line(int(i)) for i in history[-3:])
    cands, _ = g.candidates(history, 1)
    rec = g.item_line(int(cands[0])) if cands else "no candidate"
    return [profile] + [recent] * max(k - 2, 0) + [rec] if k >= 2 else [rec]


def _write(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], examples: np.ndarray | None,
           user_ids: list[str], meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (h, present) in splits.items():
        h_folder.write_split(folder, split, h, present)
    if examples is not None:
        h_folder.write_train_examples(folder, examples)
    h_folder.write_user_ids(folder, user_ids)
    h_folder.write_meta(folder, meta)  # last: a folder with meta.json is complete


def shuffled(real: Path, out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    splits = {}
    for s in h_folder.SPLITS:
        h, p = h_folder.read_split(real, s)
        perm = rng.permutation(len(h))
        splits[s] = (np.asarray(h)[perm], p[perm])
    ex = np.load(real / h_folder.TRAIN_EXAMPLES)
    ex = ex[rng.permutation(len(ex))]
    meta = read_json(real / h_folder.META)
    _write(out, splits, ex, h_folder.read_user_ids(real), {**meta, "source": f"shuffled across users: {real}"})


def constant(real: Path, out: Path) -> None:
    h, p = h_folder.read_split(real, "train")
    mean = np.asarray(h, np.float32)[p].mean(axis=0, keepdims=True)
    splits = {}
    for s in h_folder.SPLITS:
        hs, ps = h_folder.read_split(real, s)
        splits[s] = (np.broadcast_to(mean, hs.shape).astype(hs.dtype), ps)
    ex = np.load(real / h_folder.TRAIN_EXAMPLES, mmap_mode="r")
    meta = read_json(real / h_folder.META)
    _write(out, splits, np.broadcast_to(mean, ex.shape).astype(ex.dtype), h_folder.read_user_ids(real),
           {**meta, "source": f"constant (mean training H of {real})"})


def student_h(ds: Any, real: Path, out: Path, k: int, records: list[dict[str, Any]] | None, source: str) -> dict:
    """The real folder's student recipe on `records` (None: the untrained student) -> H folder."""
    saved = load_checkpoint(real / "encoder_student.pt")
    cfg = EncoderStudentConfig(**saved["config"])
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"source": source}
    if records is None:
        torch.manual_seed(cfg.seed)
        student = EncoderStudent(copy.deepcopy(sentence_encoder()), k, cfg)
    else:
        steps = read_json(real / h_folder.META)["template"]
        student, report["student"] = pipeline.train_encoder_student(ds, {"steps": steps, "records": records}, cfg,
                                                                    out)
    pipeline.precompute_h(student, ds, out, cfg)
    meta = read_json(real / h_folder.META)
    h_folder.write_meta(out, {**meta, "source": source, "teacher_chains": len(records or [])})
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, required=True, help="H folder of the real teacher stage")
    ap.add_argument("--out", type=Path, required=True, help="one sub-folder per source")
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    bad = [s for s in args.sources.split(",") if s not in SOURCES]
    if bad:
        ap.error(f"--sources: unknown {bad}; choose from {list(SOURCES)}")
    ds = corpus.load(args.dataset)
    k = int(read_json(args.real / h_folder.META)["K"])
    for name in args.sources.split(","):
        folder = args.out / name
        if (folder / h_folder.META).exists():
            log.info("%s: %s exists, skipped", name, folder)
            continue
        if name == "shuffled":
            shuffled(args.real, folder, args.seed)
        elif name == "constant":
            constant(args.real, folder)
        elif name == "untuned":
            student_h(ds, args.real, folder, k, None, "untuned encoder student (random head, no teacher)")
        else:
            g = Grounding(ds)
            teacher = read_json(args.real / "teacher_chains_oracle.json")
            rows = [{"history": r["history"], "steps": facts_chain(g, r["history"], k)}
                    for r in teacher["records"] if r["steps"] is not None]
            student_h(ds, args.real, folder, k, rows, f"grounding facts alone (no LLM), {len(rows)} chains on the "
                      "teacher's rows, encoder student")
        log.info("%s: wrote %s", name, folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
