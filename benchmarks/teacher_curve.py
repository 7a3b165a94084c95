"""SIMULATION: what teacher quality buys SCoTER. A synthetic teacher (never a default, labelled as a simulation in
every output) writes template-shaped chains for sampled training rows whose last step, "Item Recommendation",
names the true next item with probability q and otherwise a plausible wrong item (same leaf category). The chains
go through the project's own path: the encoder student (history -> K step embeddings; it never sees a target),
H for every user and split from the student only, then SCoTER fused onto the served SASRec-SID and trained for
the same budget as the backbone continued without reasoning, both from the same starting weights.

One more point, "oracle H upper bound", replaces the student's last step by the embedding of the row's own target
(test H built from the test target itself): the most the fusion can extract, not a result. Points "oracle@p" name
the target with probability p (else a same-category wrong item) in every split: how the gain grows with what H
knows beyond the history, which a student that reads only the history cannot know.

    python -m benchmarks.teacher_curve --init-from benchmarks/checkpoints/beauty_sasrec_sid.pt \\
        --codes benchmarks/checkpoints/beauty_semantic_ids_rqvae.npz --time-budget 480 \\
        --out benchmarks/results/beauty_teacher_curve.json

Stages are resumable (H folders and run folders under --work); `--points` picks which points to run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import RESULTS, provenance, write_result
from offline.backbones.config import TrainConfig
from offline.backbones.train import BEST, Trainer
from offline.data.datasets import LeaveOneOut
from offline.data.evaluation import group_items_by_popularity, group_users_by_length, rank_metrics
from offline.data.splits import Splits
from offline.fusion.experiments import ScoterRunConfig
from offline.fusion.train import ScoterTrainer
from offline.reasoning import corpus
from offline.reasoning.config import EncoderStudentConfig
from offline.reasoning.encode import embed, sentence_encoder
from offline.reasoning.grounding import Grounding
from offline.reasoning.pipeline import _student_inputs, fidelity, precompute_h
from offline.reasoning.students import EncoderStudent
from offline.semantic_ids.codes import SemanticIds
from offline.training_utils import load_checkpoint
from scoter import h_folder

log = logging.getLogger("teacher_curve")
STEPS = ["User Profile", "Recent Items", "Item Recommendation"]
QS = (0.0, 0.05, 0.1, 0.2, 0.4, 1.0)
LABEL = "SIMULATION (synthetic teacher)"


def step_texts(grounding: Grounding, history: list[int]) -> tuple[str, str]:
    """The first two steps: facts from the history alone (the same at every q)."""
    recent = "; ".join(grounding.item_line(int(i)) for i in history[-3:])
    return f"User Profile: {grounding.render_profile(history) or 'no profile'}", f"Recent Items: {recent}"


def wrong_items(ds: Any, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every row's target, a random other item of its leaf category (a random item when it is alone), drawn
    afresh per row: a fixed item-to-wrong-item map would let the fusion learn the map back to the target."""
    cat = [it.categories[-1] if it.categories else "" for it in ds.items]
    by_cat: dict[str, np.ndarray] = {}
    for i, c in enumerate(cat, 1):
        by_cat.setdefault(c, []).append(i)
    by_cat = {c: np.asarray(v) for c, v in by_cat.items()}
    out = np.empty(len(targets), np.int64)
    for n, t in enumerate(np.asarray(targets, np.int64)):
        pool = by_cat[cat[t - 1]]
        j = int(t)
        while j == t:
            j = int(pool[rng.integers(len(pool))]) if len(pool) > 1 else int(rng.integers(1, ds.n_items + 1))
        out[n] = j
    return out


def cached(path: Path, fn) -> np.ndarray:
    if path.exists():
        return np.load(path)
    arr = fn()
    np.save(path, arr)
    return arr


def build_h(ds: Any, work: Path, q: float | str, n_teacher: int, seed: int, item_step: np.ndarray,
            prefix_steps: np.ndarray, examples: list[dict]) -> tuple[Path, dict]:
    """Teacher H at quality q -> encoder student -> H folder (or the oracle folder from q=1's)."""
    folder = work / f"h_{q}"
    report_path = folder / "report.json"
    if report_path.exists():
        return folder, json.loads(report_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    if str(q).startswith("oracle"):
        # "oracle": the last step names the row's own target; "oracle@p": it does with probability p, else a
        # same-category wrong item, in every split: how the fusion's gain grows with what H knows
        share = float(str(q).split("@", 1)[1]) if "@" in str(q) else 1.0
        src = build_h(ds, work, 1.0, n_teacher, seed, item_step, prefix_steps, examples)[0]
        loo = LeaveOneOut(ds)
        rng = np.random.default_rng(seed + 7)

        def named(t: np.ndarray) -> np.ndarray:
            return np.where(rng.random(len(t)) < share, t, wrong_items(ds, t, rng))

        targets = {"train": np.array([s[-3] if len(s) >= 4 else s[0] for s in ds.sequences]),
                   "valid": np.array([s[-2] for s in ds.sequences]), "test": np.array([s[-1] for s in ds.sequences])}
        for split in h_folder.SPLITS:
            H, present = h_folder.read_split(src, split)
            H = np.array(H, np.float32)
            H[:, -1] = item_step[named(targets[split])]  # from the row's own target: a bound, never a result
            h_folder.write_split(folder, split, H, present)
        ex = np.array(np.load(src / h_folder.TRAIN_EXAMPLES), np.float32)
        ex[:, -1] = item_step[named(loo.train_examples()[1])]
        h_folder.write_train_examples(folder, ex.astype(np.float16))
        h_folder.write_user_ids(folder, ds.user_ids)
        what = "oracle H upper bound" if share == 1.0 else f"noisy oracle H (the target named with p={share})"
        report = {"q": str(q), "label": f"{what} (test H from the test target)", "oracle_share": share,
                  "h_last_step_test_recall@10": last_step_retrieval(ds, folder, item_step)}
        h_folder.write_meta(folder, {"source": f"{LABEL}: {what}", "K": 3, "D": int(H.shape[2]), "steps": STEPS})
        report_path.write_text(json.dumps(report, indent=2))
        return folder, report
    rng = np.random.default_rng(seed + int(round(float(q) * 1000)))
    targets = np.array([e["target"] for e in examples])
    right = rng.random(len(examples)) < float(q)
    named = np.where(right, targets, wrong_items(ds, targets, rng))
    target = np.concatenate([prefix_steps, item_step[named][:, None]], axis=1).astype(np.float32)  # [N, K, D]
    cfg = EncoderStudentConfig()
    torch.manual_seed(cfg.seed)
    student = EncoderStudent(sentence_encoder(), len(STEPS), cfg)
    _, pooled = _student_inputs(ds, [e["history"] for e in examples], cfg)
    n_hold = len(examples) // 7
    t0 = time.perf_counter()
    student.fit(None, target[n_hold:], pooled=pooled[n_hold:])
    fit_s = time.perf_counter() - t0
    fid = fidelity(student.predict(None, pooled=pooled[:n_hold]), target[:n_hold], target[n_hold:])
    # how close the student's last step is to the true target's step (held-out rows): what H can carry
    pred_last = student.predict(None, pooled=pooled[:n_hold])[:, -1]
    true_last = item_step[[e["target"] for e in examples[:n_hold]]]
    cos_true = float(((pred_last * true_last).sum(-1) / np.linalg.norm(pred_last, axis=-1)
                      / np.linalg.norm(true_last, axis=-1)).mean())
    t0 = time.perf_counter()
    precompute_h(student, ds, folder, cfg)
    h_s = time.perf_counter() - t0
    retrieval = last_step_retrieval(ds, folder, item_step)
    h_folder.write_meta(folder, {"source": f"{LABEL}: q={q}, {n_teacher} chains, encoder student", "K": 3,
                                 "D": int(target.shape[2]), "steps": STEPS, "q": q})
    report = {"q": q, "teacher_chains": len(examples), "named_true_share": float(right.mean()),
              "teacher_validate_recall@20": float(right.mean()), "student_fit_s": fit_s, "h_seconds": h_s,
              "student_heldout": fid, "student_last_step_cosine_to_true_target": cos_true,
              "student": cfg.model_dump(), "student_last_step_test_recall@10": retrieval}
    report_path.write_text(json.dumps(report, indent=2))
    return folder, report


def item_steps(ds: Any, grounding: Grounding, encoder: Any) -> np.ndarray:
    """Every item's "Item Recommendation: <item>" step vector [n_items + 1, D] (row 0: padding, zeros)."""
    vecs = embed([f"Item Recommendation: {grounding.item_line(i)}" for i in range(1, ds.n_items + 1)], encoder=encoder)
    return np.concatenate([np.zeros((1, vecs.shape[1]), np.float32), vecs.astype(np.float32)])


def step_recall_at_10(queries: np.ndarray, item_step: np.ndarray, hist: np.ndarray,
                      tgt: np.ndarray) -> dict[str, float]:
    """Recall@10 of step vectors used alone as retrievers: nearest items by cosine, history excluded."""
    q = torch.nn.functional.normalize(torch.from_numpy(np.asarray(queries, np.float32)), dim=-1)
    items = torch.nn.functional.normalize(torch.from_numpy(item_step), dim=-1)
    hits = []
    for s in range(0, len(tgt), 2048):
        sc = (q[s:s + 2048] @ items.T).scatter_(1, torch.from_numpy(hist[s:s + 2048]), float("-inf"))
        sc[:, 0] = float("-inf")  # padding
        hits.append((sc.topk(10, dim=1).indices.numpy() == tgt[s:s + 2048, None]).any(1))
    hit = np.concatenate(hits).astype(float)
    return {"recall@10": float(hit.mean()), "se": float(hit.std(ddof=1) / np.sqrt(len(hit))), "users": len(hit)}


def last_step_retrieval(ds: Any, folder: Path, item_step: np.ndarray) -> dict[str, float]:
    """Test Recall@10 of the student's "Item Recommendation" step alone: what the H can tell the fusion about
    the next item."""
    H, _ = h_folder.read_split(folder, "test")
    hist, tgt = LeaveOneOut(ds).eval_examples("test")
    return step_recall_at_10(H[:, -1], item_step, hist, tgt)


def embedded_teacher_validate() -> dict[str, float]:
    """Validate Recall@20 of the embedded teacher per prompt variant, as benchmarks/reasoning.py last measured
    it (beauty_reasoning.json): where the real teachers sit on the q axis."""
    path = RESULTS / "beauty_reasoning.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    out = {f"{k} ({doc['validate_users'][k]} users)": v for k, v in doc.get("validate_recall@20", {}).items()
           if v is not None and "+" not in k}
    if doc.get("grounding_candidates_recall@20") is not None:
        out[f"grounding candidates, no LLM ({doc['grounding_candidates_users']} users)"] = \
            doc["grounding_candidates_recall@20"]
    return out


def per_user(items: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    hits = items[:, :10] == targets[:, None]
    rank = np.where(hits.any(1), hits.argmax(1), 99)
    return {"recall@10": (rank < 10).astype(float),
            "ndcg@10": np.where(rank < 10, 1.0 / np.log2(np.minimum(rank, 98) + 2.0), 0.0)}


def paired(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for k in a:
        d = a[k] - b[k]
        out[k] = {"diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))),
                  "relative": float(d.mean() / b[k].mean()) if b[k].mean() else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--codes", type=Path, required=True)
    ap.add_argument("--init-from", type=Path, required=True, help="the backbone both arms start from")
    ap.add_argument("--backbone", choices=["sasrec-sid", "tiger", "hstu"], default="sasrec-sid",
                    help="the --init-from checkpoint's kind (tiger: SCoTER-T)")
    ap.add_argument("--work", type=Path, default=Path("artifacts/beauty/teacher_curve"))
    ap.add_argument("--teacher-users", type=int, default=4000)
    ap.add_argument("--time-budget", type=float, default=None, help="training seconds per arm")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per arm (the same steps whatever else runs)")
    ap.add_argument("--points", default="baseline,oracle,1.0,0.0,0.2,0.4,0.1,0.05")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/beauty_teacher_curve.json"))
    ap.add_argument("--fusion-config", default=None, help="JSON overrides of the fusion config (ablations, lambda)")
    ap.add_argument("--label", default=LABEL, help="what the points are (the default: the simulation)")
    ap.add_argument("--h-folder", action="append", default=[], metavar="NAME=PATH",
                    help="a real H folder, run as point h:NAME beside the simulated ones")
    args = ap.parse_args(argv)
    h_folders = {f"h:{spec.split('=', 1)[0]}": Path(spec.split("=", 1)[1]) for spec in args.h_folder}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.time()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    ds = corpus.load(args.dataset)
    splits = Splits.load(args.dataset)
    codes = SemanticIds.load(args.codes)
    grounding = Grounding(ds)
    rows = corpus.sample_users(ds, args.teacher_users, args.seed + 1)
    examples = [{"history": h.tolist(), "target": t} for h, t in
                (corpus.oracle_example(ds.sequences[u]) for u in rows)]
    enc = sentence_encoder()
    item_step = cached(work / "item_step.npy", lambda: item_steps(ds, grounding, enc))

    def prefix() -> np.ndarray:
        texts = [step_texts(grounding, e["history"]) for e in examples]
        return embed([t for pair in texts for t in pair], encoder=enc).reshape(len(examples), 2, -1)

    simulated = [p for p in args.points.split(",") if p and p != "baseline" and not p.startswith("h:")]
    prefix_steps = cached(work / f"prefix_steps_{args.teacher_users}.npy", prefix) if simulated else None
    train = TrainConfig(batch_size=128, lr=5e-4, warmup_steps=50, weight_decay=0.0, time_budget_s=args.time_budget,
                        epochs=args.epochs, eval_users=5000, patience=40, num_threads=args.threads, seed=args.seed,
                        sub_windows=False)  # the curve's protocol: every point trains each user's newest window
    ckpt = load_checkpoint(args.init_from)
    model_cfg = ckpt["model_config"]
    test_hist, test_tgt = splits.test
    results: dict[str, Any] = {}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for point in [p for p in args.points.split(",") if p]:
        vec_path, res_path = work / f"vectors_{point}.npz", work / f"point_{point}.json"
        if res_path.exists() and vec_path.exists():
            continue
        t0 = time.perf_counter()
        out = work / f"run_{point}"
        if point == "baseline":
            trainer = Trainer(args.backbone, splits, codes, out, train, model_cfg, device="cpu", init_from=args.init_from)
            trainer.fit()
            trainer.model.load_state_dict(load_checkpoint(out / BEST)["model"])
            items, _ = trainer.model.recommend(test_hist, 20, beam=20)
            vec = per_user(items, test_tgt)
            results[point] = {"test": rank_metrics(items, test_tgt, (10, 20)), "epochs": trainer.epoch}
        else:
            if point.startswith("h:"):  # real H from the project's pipeline (a folder `scoter reason distill` wrote)
                folder = h_folders[point]
                report = {"source": json.loads((folder / h_folder.META).read_text()), "h_dir": str(folder),
                          "student_last_step_test_recall@10": last_step_retrieval(ds, folder, item_step)}
            else:
                q: float | str = point if point.startswith("oracle") else float(point)
                folder, report = build_h(ds, work, q, args.teacher_users, args.seed, item_step, prefix_steps,
                                         examples)
            reasoning = h_folder.load_reasoning(folder, ds.user_ids)
            run = ScoterRunConfig(backbone=args.backbone, dataset=args.dataset, codes_path=args.codes,
                                  reasoning_dir=folder, backbone_config=model_cfg, train=train)
            fusion = run.fusion_config(reasoning.D, model_cfg.get("d_model", 64))
            if args.fusion_config:
                fusion = fusion.model_copy(update=json.loads(args.fusion_config))
            trainer = ScoterTrainer(args.backbone, splits, codes, out, train, fusion, reasoning, model_cfg,
                                    device="cpu", init_from=args.init_from)
            trainer.fit()
            trainer.model.load_state_dict(load_checkpoint(out / BEST)["model"])
            items, tgt = trainer.rank("test")
            items_absent, _ = trainer.rank("test", with_h=False)
            vec = per_user(items, tgt)
            vec.update({f"{k}_h_absent": v for k, v in per_user(items_absent, tgt).items()})
            results[point] = {"reasoning": report, "test": rank_metrics(items, tgt, (10, 20)),
                              "test_h_absent": rank_metrics(items_absent, tgt, (10, 20)), "epochs": trainer.epoch,
                              "fusion": trainer.fusion_cfg.model_dump()}
            fused = trainer.model.fusion
            if trainer.fusion_cfg.vote_items:  # the same weights with the vote off: the attention fusion alone
                weight = float(fused.vote_weight)
                fused.vote_weight.fill_(0.0)
                items_nv, _ = trainer.rank("test")
                fused.vote_weight.fill_(weight)
                vec.update({f"{k}_no_vote": v for k, v in per_user(items_nv, tgt).items()})
                results[point].update(test_no_vote=rank_metrics(items_nv, tgt, (10, 20)), vote_weight=weight,
                                      vote_grid_valid_recall10=load_checkpoint(out / BEST).get("vote_grid"))
        results[point]["seconds"] = time.perf_counter() - t0
        np.savez(vec_path, **vec)
        res_path.write_text(json.dumps(results[point], indent=2))
        log.info("point %s: test %s", point, results[point]["test"])
    # every point finished so far, by this process or another one running other --points in the same --work
    for res_path in sorted(work.glob("point_*.json")):
        point = res_path.stem.removeprefix("point_")
        results[point] = json.loads(res_path.read_text())
        vectors[point] = dict(np.load(work / f"vectors_{point}.npz"))
    base = vectors.get("baseline")
    loo = LeaveOneOut(ds)
    user_groups = {"user length quartile (0 = shortest)": group_users_by_length(loo.sequence_lengths()),
                   "target popularity quartile (0 = least popular)":
                       group_items_by_popularity(loo.train_item_counts())[test_tgt]}
    if base is not None:
        for point, vec in vectors.items():
            if point == "baseline":
                continue
            results[point]["vs_baseline"] = paired({k: vec[k] for k in ("recall@10", "ndcg@10")}, base)
            for variant in ("h_absent", "no_vote"):
                if f"recall@10_{variant}" in vec:
                    results[point][f"{variant}_vs_baseline"] = paired(
                        {k: vec[f"{k}_{variant}"] for k in ("recall@10", "ndcg@10")}, base)
            results[point]["vs_baseline_by_group"] = {  # paper Fig. 4: where a gain lands
                name: {str(g): paired({"recall@10": vec["recall@10"][groups == g]},
                                      {"recall@10": base["recall@10"][groups == g]})["recall@10"] for g in range(4)}
                for name, groups in user_groups.items()}
    doc = {"label": args.label, **provenance(),
           "protocol": {"backbone": args.backbone, "init_from": str(args.init_from), "train": train.model_dump(),
                        "teacher_users": args.teacher_users, "steps": STEPS,
                        "embedded_teacher_validate_recall@20": embedded_teacher_validate(),
                        "wall_s": time.time() - started},
           "points": results}
    write_result(args.out, doc)
    plot(doc, args.out.with_suffix(".png"))
    return 0


def draw_gains(ax: Any, pts: list[tuple[float, dict[str, Any]]]) -> None:
    """Relative Recall@10 and NDCG@10 gain over the backbone (±2 SE) of (x, point result) pairs."""
    for metric, style in (("recall@10", "o-"), ("ndcg@10", "s--")):
        rel = [100 * r["vs_baseline"][metric]["relative"] for _, r in pts]
        se = [100 * r["vs_baseline"][metric]["se"] / (r["test"][metric] - r["vs_baseline"][metric]["diff"])
              for _, r in pts]
        ax.errorbar([x for x, _ in pts], rel, yerr=[2 * s for s in se], fmt=style, capsize=3,
                    label=f"{metric} (±2 SE)")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("SCoTER gain over the equal-compute backbone, %")


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(float(p), r) for p, r in doc["points"].items()
           if p != "baseline" and not p.startswith(("h:", "oracle")) and "vs_baseline" in r]
    if not pts:
        return
    pts.sort()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw_gains(ax, pts)
    oracle = doc["points"].get("oracle", {}).get("vs_baseline")
    if oracle:  # off the curve's scale: written, not drawn
        ax.text(0.98, 0.03, f"oracle H upper bound: recall@10 {100 * oracle['recall@10']['relative']:+.0f}%",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="grey")
    for name, x in doc["protocol"]["embedded_teacher_validate_recall@20"].items():
        ax.axvline(x, color="tab:red", alpha=0.3, lw=1)
        ax.annotate(name.split(" (")[0], (x, ax.get_ylim()[0]), rotation=90, fontsize=7, color="tab:red",
                    va="bottom")
    ax.set_xlabel("q = share of chains naming the true next item (= teacher Validate Recall@20)")
    ax.set_title(f"{doc['label']}: SCoTER gain vs teacher quality (Beauty test)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
