"""Generate-Validate-Mine (paper 3.2, Algorithm 1): sample reasoning paths, score them by Recall@20 against
the validation target, cluster the paths, and abstract the best cluster into a template."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offline.reasoning import corpus, grammars, prompts
from offline.reasoning.config import GVMConfig, SamplingParams
from offline.reasoning.encode import unit_rows
from offline.reasoning.llm import LLM
from offline.reasoning.parsing import parse_best_path, parse_gvm_output
from scoter.io import describe_output, write_json

log = logging.getLogger(__name__)
Embed = Callable[[Sequence[str]], np.ndarray]


def prune_near_duplicates(emb: np.ndarray, threshold: float = 0.85) -> list[int]:
    """Greedy in input order: keep a path unless its cosine to an already kept path exceeds `threshold`."""
    unit = unit_rows(emb)
    kept: list[int] = []
    for i in range(len(unit)):
        if not kept or float((unit[kept] @ unit[i]).max()) <= threshold:
            kept.append(i)
    return kept


def map_to_items(rec_emb: np.ndarray, item_emb: np.ndarray) -> np.ndarray:
    """Top-1 catalogue item (1-based index) per recommendation text by cosine."""
    return (rec_emb @ item_emb.T).argmax(axis=1) + 1


def recall_score(recs: Sequence[str], target: int, item_emb: np.ndarray, embed: Embed, k: int = 20) -> float:
    """Recall@k of one chain: 1 if the target is among the unique items its first k recommendations map to."""
    if not recs:
        return 0.0
    predicted = set(map_to_items(embed(list(recs)[:k]), item_emb).tolist())
    return float(target in predicted)


@dataclass
class Mining:
    labels: np.ndarray
    k: int
    silhouettes: dict[int, float]
    clusters: list[dict[str, Any]]
    best: int


def mine(path_emb: np.ndarray, scores: np.ndarray, k_candidates: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
         seed: int = 0) -> Mining:
    """K-Means over path embeddings, k by silhouette; Quality = mean score; best = highest quality
    (ties: larger cluster, then lower id)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = len(path_emb)
    sil: dict[int, float] = {}
    best_k, labels = 1, np.zeros(n, int)
    n_distinct = len(np.unique(np.round(path_emb, 6), axis=0))
    for k in k_candidates:
        if not 2 <= k < min(n, n_distinct + 1):
            continue
        lab = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(path_emb)
        if len(set(lab.tolist())) < 2:
            continue
        sil[k] = float(silhouette_score(path_emb, lab, metric="cosine"))
        if best_k == 1 or sil[k] > sil[best_k]:
            best_k, labels = k, lab
    clusters = []
    for c in range(best_k):
        m = labels == c
        clusters.append({"id": c, "size": int(m.sum()), "quality": float(scores[m].mean()) if m.any() else 0.0})
    order = sorted(clusters, key=lambda c: (-c["quality"], -c["size"], c["id"]))
    for rank, c in enumerate(order, 1):
        c["rank"] = rank
    return Mining(labels=labels, k=best_k, silhouettes=sil, clusters=clusters, best=order[0]["id"])


def exemplars(path_emb: np.ndarray, labels: np.ndarray, cluster: int, n: int = 10) -> list[int]:
    """Indices of the n members of `cluster` with the highest cosine to its centroid."""
    idx = np.flatnonzero(labels == cluster)
    unit = unit_rows(path_emb[idx])
    sims = unit @ unit_rows(unit.mean(axis=0))
    return idx[np.argsort(-sims, kind="stable")[:n]].tolist()


def degenerate(text: str, min_distinct: float = 0.5) -> bool:
    """Repetition check: True when fewer than `min_distinct` of the words (or of the word bigrams) differ,
    e.g. "ire ire ire" or "expand the previous step to expand on the previous step"."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    if len(words) < 3:
        return not words
    bigrams = list(zip(words, words[1:], strict=False))
    return len(set(words)) / len(words) < min_distinct or len(set(bigrams)) / len(bigrams) < min_distinct


def cluster_facets(paths: Sequence[str], min_share: float = 0.5) -> list[str]:
    """The step facets (`grammars.STEP_FACETS`) plus the two-word phrases (letters only, no link words) that
    recur in at least `min_share` of the cluster's exemplar paths: what the cluster's pattern is about."""
    seen: Counter[str] = Counter()
    for p in paths:
        words = [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z-]*", p)]
        seen.update({f"{a} {b}" for a, b in zip(words, words[1:], strict=False)
                     if min(len(a), len(b)) >= 3 and not {a, b} & set(grammars.LINK_WORDS)})
    recurring = sorted(ph for ph, n in seen.items() if n >= max(2, min_share * len(paths)))
    return list(dict.fromkeys([*grammars.STEP_FACETS, *recurring]))


def usable_path(steps: list[str] | None) -> bool:
    """A template worth distilling with: no two steps about the same thing (the step without its verb), no
    looping words."""
    if not steps:
        return False
    topics = {step_topic(s) for s in steps}
    return len(topics) == len(steps) and not degenerate(" ".join(steps))


def step_name(step: str) -> str:
    """'Analyze brand preferences' -> 'Analyze Brand Preferences', as the paper's templates name steps."""
    return " ".join(w if w in grammars.LINK_WORDS else w[:1].upper() + w[1:] for w in step.split())


def step_topic(step: str) -> str:
    """'Analyze item tags' -> 'item tags': what a step is about, its verb stripped."""
    low = step.strip().lower()
    return next((low[len(v) + 1:] for v in (x.lower() for x in grammars.STEP_VERBS) if low.startswith(v + " ")), low)


def write_distinct_path(llm: LLM, chat: list[dict[str, str]], lead: str, facets: Sequence[str],
                        params: SamplingParams, cfg: GVMConfig, tries: int, min_len: int) -> list[str]:
    """`tries` sampled Best Paths, written one step per call: each step is a verb and a facet not used earlier in
    its path (grammars.best_path_step), and the path ends in "Item Recommendation" within the template's length.
    One grammar cannot forbid a repeat, so drafts that used the same facets share a call. Try j opens with the
    j-th verb: the samples differ from the first step on, and no two share a prompt (nor a cache entry). A path
    has at least `min_len` steps (within the config's bounds)."""
    hi = cfg.max_steps - 1  # content steps, before "Item Recommendation"
    lo = min(max(cfg.min_steps, min_len) - 1, hi)
    verbs = [grammars.STEP_VERBS[j % len(grammars.STEP_VERBS)] for j in range(tries)]
    drafts, used = [f"{lead}{v} " for v in verbs], [frozenset[str]()] * tries
    for i in range(hi):
        groups: dict[frozenset[str], list[int]] = {}
        for j in range(tries):
            if not drafts[j].rstrip().endswith("-> Item Recommendation"):
                groups.setdefault(used[j], []).append(j)
        for seen, rows in groups.items():
            left = [f for f in facets if f not in seen]
            grammar = grammars.best_path_step(left, can_end=i + 1 >= lo, must_end=i + 1 == hi or len(left) == 1,
                                              verb=i > 0)
            outs = llm.generate([chat + [{"role": "assistant", "content": drafts[j]}] for j in rows],
                                params.model_copy(update={"grammar": grammar}))
            for j, out in zip(rows, outs, strict=True):
                drafts[j] += out
                used[j] = seen | {step_topic(drafts[j][len(lead):].split(" -> ")[i])}
    return drafts


def abstract_template(llm: LLM, paths: Sequence[str], mining: Mining, cfg: GVMConfig,
                      fallback: list[str]) -> dict[str, Any]:
    """Figure-10 prompt -> 'Best Path'; falls back to the centroid-nearest path when the answer is unusable."""
    best = next(c for c in mining.clusters if c["id"] == mining.best)
    chat = prompts.mine_chat(paths, cluster_id=best["id"], rank=best["rank"], n_clusters=mining.k,
                             recall=best["quality"], k=cfg.recall_k)
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=cfg.template_max_tokens, seed=cfg.seed)
    if cfg.structured and cfg.variant != "paper":  # the model writes only the Best Path, step by step
        lead = "### 3. Optimized Paths\n- Best Path (each step <= 8 words): "
        params = params.model_copy(update={"repetition_penalty": 1.15, "temperature": 0.5, "top_p": 0.9})
        typical = int(np.median([p.count(" -> ") + 1 for p in paths]))  # as long as the cluster's paths
        drafts = write_distinct_path(llm, chat, lead, cluster_facets(paths), params, cfg, tries=8, min_len=typical)
        for draft in drafts:  # the first usable sample wins
            steps = parse_best_path(draft, min_steps=cfg.min_steps, max_steps=cfg.max_steps)
            if steps and steps[-1] == "Item Recommendation" and usable_path(steps):
                # the grammar's lower-case facets, named like the paper's steps
                return {"steps": [step_name(s) for s in steps], "source": "llm_best_path", "llm_output": draft}
        return {"steps": fallback, "source": "centroid_path_fallback", "llm_output": drafts[0]}
    raw = llm.generate([chat], params)[0]
    steps = parse_best_path(raw, min_steps=cfg.min_steps, max_steps=cfg.max_steps)
    if not usable_path(steps):
        return {"steps": fallback, "source": "centroid_path_fallback", "llm_output": raw}
    return {"steps": steps, "source": "llm_best_path", "llm_output": raw}


def guided_generate(llm: LLM, chats: list[list[dict[str, str]]], cfg: GVMConfig, seed: int,
                    fixed_path: Sequence[str] | None = None) -> list[str]:
    """Figure-9 answers written section by section: the opening tag of each section is prefilled as the
    assistant turn and the model writes the body until the closing tag (guided decoding, as vLLM's guided
    generation would enforce). The sections' content is still entirely the model's, except with `fixed_path`:
    then the <cot_path> is that template's steps and the model writes only the reason and the recommendations
    (how a manual template is validated on the same footing as the sampled paths)."""
    rounds = [("<cot_path>\n", ("</cot_path>", "<reason>"), cfg.path_max_tokens, "\n</cot_path>\n"),
              ("<reason>\n", ("</reason>", "<recommendations>"), cfg.reason_max_tokens, "\n</reason>\n"),
              ("<recommendations>\n<item>", ("</recommendations>",), cfg.recs_max_tokens, "\n</recommendations>")]
    answers = [""] * len(chats)
    if fixed_path is not None:
        answers = [f"<cot_path>\n{' -> '.join(fixed_path)}\n</cot_path>\n"] * len(chats)
        rounds = rounds[1:]
    for r, (opening, stop, max_tokens, closing) in enumerate(rounds):
        prefixes = [a + opening for a in answers]
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=max_tokens,
                                seed=seed * 10 + r, stop=stop)
        conts = llm.generate([c + [{"role": "assistant", "content": p}] for c, p in zip(chats, prefixes, strict=True)],
                             params)
        answers = [p + t.strip() + closing for p, t in zip(prefixes, conts, strict=True)]
    return answers


def variant_examples(cfg: GVMConfig, dataset: Any, rows: Sequence[int], grounding: Any = None,
                     fixed_path: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One structured Figure-9 prompt per user for `cfg.variant`, scored later against the validation target
    seq[-2]. Inputs come from seq[:-2] only: the history (hindsight: seq[:-3] plus the item bought right
    after it, seq[-3]) and the candidates from co-occurrence over training parts."""
    from offline.reasoning.grounding import Grounding

    g = grounding or Grounding(dataset)
    out = []
    for u in rows:
        seq = dataset.sequences[u]
        train = seq[:-2]
        cands = g.candidates(train, cfg.candidates)[0] if cfg.variant != "plain" else None
        hist, nxt = (train[:-1], int(train[-1])) if cfg.variant == "hindsight" else (train, None)
        chat = prompts.gvm_variant_chat(cfg.variant, g, hist, candidates=cands, next_item=nxt,
                                        n_recs=cfg.plain_recs if cfg.variant == "plain" else cfg.recall_k)
        if fixed_path is not None:  # a given template: the answer starts with it, the model writes the rest
            chat[0]["content"] += "\nUse this reasoning path: " + " -> ".join(fixed_path)
        out.append({"user": dataset.user_ids[u], "row": int(u), "target": int(seq[-2]), "chat": chat,
                    "candidates": cands, "variant": cfg.variant})
    return out


def answer_grammar(cfg: GVMConfig, fixed_path: Sequence[str] | None = None) -> str:
    plain = cfg.variant == "plain"
    return grammars.gvm_answer(fixed_path=fixed_path, n_candidates=None if plain else cfg.candidates,
                               n_recs=cfg.plain_recs if plain else cfg.recall_k, reason_chars=cfg.reason_chars,
                               min_steps=cfg.min_steps, max_steps=min(cfg.max_steps, 5), step_words=cfg.step_words,
                               rec_chars=48)


def structured_generate(llm: LLM, examples: Sequence[dict[str, Any]], cfg: GVMConfig, seed: int,
                        fixed_path: Sequence[str] | None = None) -> list[str]:
    """The whole answer in one grammar-constrained generation (well-formed by construction)."""
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed,
                            grammar=answer_grammar(cfg, fixed_path), line_max_tokens=cfg.line_max_tokens,
                            repetition_penalty=cfg.repetition_penalty)
    return llm.generate([ex["chat"] for ex in examples], params)


def recommended_items(recs: Sequence[str], candidates: Sequence[int] | None, item_emb: np.ndarray, embed: Embed,
                      k: int = 20) -> list[int]:
    """Catalogue items (1-based) a chain recommends, unique, at most k. A candidate number maps to its item
    exactly; any other text (a paraphrase, or the plain variant's descriptions) maps by embedding to its
    k // len(recs) nearest items."""
    items: list[int] = []
    text: list[str] = []
    for r in recs:
        r = r.strip()
        if candidates and r.isdigit() and 1 <= int(r) <= len(candidates):
            items.append(int(candidates[int(r) - 1]))
        elif r:
            text.append(r)
    if text:
        per = max(1, k // max(len(recs), 1))
        sims = embed(text) @ item_emb.T
        for row in sims:
            items.extend((np.argsort(-row)[:per] + 1).tolist())
    return list(dict.fromkeys(items))[:k]


def _score(parsed: Any, ex: dict[str, Any], item_emb: np.ndarray, embed: Embed, k: int) -> float:
    if ex.get("variant", "paper") == "paper":  # Figure 9 verbatim: one item per description
        return recall_score(parsed.recommendations, ex["target"], item_emb, embed, k)
    return float(ex["target"] in recommended_items(parsed.recommendations, ex.get("candidates"), item_emb,
                                                   embed, k))


def mean_se(x: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample sd / sqrt n)."""
    a = np.asarray(x, np.float64)
    if len(a) == 0:
        return None, None
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def validate_variant(cfg: GVMConfig, llm: LLM, dataset: Any, *, rows: Sequence[int] | None = None,
                     fixed_path: Sequence[str] | None = None, grounding: Any = None, embed: Embed | None = None,
                     item_emb: np.ndarray | None = None) -> dict[str, Any]:
    """Generate-Validate for one prompt variant (and optionally a fixed template) on `rows` (default
    `cfg.users` sampled users): well-formed rate, Recall@k of the recommendations with its standard error
    (malformed answers count as misses), and the candidate list's own Recall@k for reference."""
    from offline.reasoning.encode import embed as default_embed
    from offline.reasoning.encode import item_embeddings

    embed = embed or default_embed
    items = item_emb if item_emb is not None else item_embeddings(dataset)
    rows = list(rows) if rows is not None else corpus.sample_users(dataset, cfg.users, cfg.seed)
    t0 = time.perf_counter()
    tok0 = getattr(llm, "generated_tokens", 0)
    examples = variant_examples(cfg, dataset, rows, grounding, fixed_path)
    outputs = structured_generate(llm, examples, cfg, cfg.seed, fixed_path)
    gen_s = time.perf_counter() - t0
    parsed = [parse_gvm_output(o, min_steps=1 if fixed_path else cfg.min_steps) for o in outputs]
    lists = [recommended_items(p.recommendations, ex.get("candidates"), items, embed, cfg.recall_k)
             if p.error is None else [] for p, ex in zip(parsed, examples, strict=True)]
    scores = [float(ex["target"] in r) for r, ex in zip(lists, examples, strict=True)]
    top = min(cfg.rerank_k, cfg.recall_k)
    scores_top = [float(ex["target"] in r[:top]) for r, ex in zip(lists, examples, strict=True)]
    mean, se = mean_se(scores)
    cand = [float(ex["target"] in ex["candidates"][: cfg.recall_k]) for ex in examples if ex["candidates"]]
    cand_top = [float(ex["target"] in ex["candidates"][:top]) for ex in examples if ex["candidates"]]
    cmean, cse = mean_se(cand)
    ok = sum(p.error is None for p in parsed)
    return {"variant": cfg.variant, "template": list(fixed_path) if fixed_path else None, "users": len(rows),
            "well_formed_rate": ok / max(len(outputs), 1),
            "errors": dict(Counter(p.error for p in parsed if p.error)),
            "recall@20": mean, "recall@20_se": se,
            "candidates_recall@20": cmean, "candidates_recall@20_se": cse,
            "generated_tokens": getattr(llm, "generated_tokens", 0) - tok0, "scores": scores,
            "candidate_scores": cand, "rerank_k": top, "rerank_scores": scores_top,
            "candidate_rerank_scores": cand_top,
            "well_formed": [p.error is None for p in parsed],
            "generate_s": round(gen_s, 1), "seconds": round(time.perf_counter() - t0, 1),
            "examples": [{"user": ex["user"], "target": ex["target"], "answer": o}
                         for ex, o in list(zip(examples, outputs, strict=True))[:3]]}


def _generate(cfg: GVMConfig, llm: LLM, dataset: Any,
              fixed_path: Sequence[str] | None = None) -> tuple[list[str], list[dict[str, Any]], int]:
    """Figure-9 prompts for the sampled users' validation histories -> (outputs, meta per output, users)."""
    users = corpus.sample_users(dataset, cfg.users, cfg.seed)
    if cfg.variant != "paper" and cfg.structured:
        meta, outputs = [], []
        for s in range(cfg.samples_per_user):
            ex = variant_examples(cfg, dataset, users, fixed_path=fixed_path)
            outputs.extend(structured_generate(llm, ex, cfg, cfg.seed + s, fixed_path))
            meta.extend({**{k: v for k, v in e.items() if k != "chat"}, "sample": s} for e in ex)
        return outputs, meta, len(users)
    chats, meta = [], []
    for u in users:
        seq = dataset.sequences[u]
        hist = corpus.history(seq, "valid")  # seq[:-2]; scored against the validation target seq[-2]
        for s in range(cfg.samples_per_user):
            chats.append(prompts.generate_chat(corpus.texts(dataset, hist), max_items=cfg.history_items,
                                               n_recs=cfg.recall_k))
            meta.append({"user": dataset.user_ids[u], "row": u, "sample": s, "target": int(seq[-2])})
    outputs: list[str] = []
    for s in range(cfg.samples_per_user):  # one seed per sample round so samples differ yet stay cacheable
        idx = [i for i, m in enumerate(meta) if m["sample"] == s]
        if cfg.guided or fixed_path is not None:
            outputs.extend(guided_generate(llm, [chats[i] for i in idx], cfg, seed=cfg.seed + s,
                                           fixed_path=fixed_path))
        else:
            params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                                    seed=cfg.seed + s)
            outputs.extend(llm.generate([chats[i] for i in idx], params))
    return outputs, meta, len(users)


def validate_template(cfg: GVMConfig, llm: LLM, dataset: Any, steps: Sequence[str], *,
                      embed: Embed | None = None, item_emb: np.ndarray | None = None) -> dict[str, Any]:
    """Generate-Validate for one given template (e.g. the paper's manual 2/3/5-step ones): the same users,
    prompts and sampling as `run_gvm`, the <cot_path> fixed to `steps`; returns parse success and mean
    Recall@20, comparable with the discovered clusters' Quality(P)."""
    from offline.reasoning.encode import embed as default_embed
    from offline.reasoning.encode import item_embeddings

    embed = embed or default_embed
    t0 = time.perf_counter()
    outputs, meta, n_users = _generate(cfg, llm, dataset, fixed_path=steps)
    parsed = [parse_gvm_output(o, min_steps=1) for o in outputs]
    ok = [i for i, p in enumerate(parsed) if p.error is None and p.recommendations]
    items = item_emb if item_emb is not None else item_embeddings(dataset)
    scores = [_score(parsed[i], meta[i], items, embed, cfg.recall_k) for i in ok]
    return {"template": list(steps), "users": n_users, "generated": len(outputs), "usable": len(ok),
            "parse_success_rate": len(ok) / max(len(outputs), 1),
            "errors": dict(Counter(p.error or "no_recommendations" for i, p in enumerate(parsed) if i not in ok)),
            "mean_recall_at_20": float(np.mean(scores)) if scores else None,
            "mean_recall_at_20_all": float(np.sum(scores) / max(len(outputs), 1)),
            "seconds": round(time.perf_counter() - t0, 1)}


def run_gvm(cfg: GVMConfig, llm: LLM, dataset: Any, out_dir: Path, *, embed: Embed | None = None,
            item_emb: np.ndarray | None = None) -> dict[str, Any]:
    """The whole pipeline; writes chains.json, clusters.json, template.json and report.json into out_dir."""
    from offline.reasoning.encode import embed as default_embed
    from offline.reasoning.encode import item_embeddings

    embed = embed or default_embed
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    outputs, meta, n_users = _generate(cfg, llm, dataset)
    times["generate_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    parsed = [parse_gvm_output(o, min_steps=cfg.min_steps) for o in outputs]
    errors = Counter(p.error for p in parsed if p.error)
    ok = [i for i, p in enumerate(parsed) if p.error is None]
    chains = [{**meta[i], "raw": outputs[i], "error": parsed[i].error, "path": parsed[i].path_steps,
               "reason": parsed[i].reason, "recommendations": parsed[i].recommendations} for i in range(len(meta))]
    report: dict[str, Any] = {"users": n_users, "generated": len(outputs), "malformed": len(outputs) - len(ok),
                              "malformed_rate": (len(outputs) - len(ok)) / max(len(outputs), 1),
                              "malformed_by_reason": dict(errors)}
    if not ok:
        report["error"] = "no usable chain: every output was malformed"
        write_json(out_dir / "chains.json", chains)
        write_json(out_dir / "report.json", report)
        raise ValueError(f"GVM: all {len(outputs)} outputs malformed ({dict(errors)}); see {out_dir}/chains.json")
    path_emb = embed([parsed[i].path_text for i in ok])
    kept_local = prune_near_duplicates(path_emb, cfg.dedup_threshold)
    kept = [ok[j] for j in kept_local]
    path_emb = path_emb[kept_local]
    for i in set(ok) - set(kept):
        chains[i]["pruned"] = True
    times["parse_prune_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    items = item_emb if item_emb is not None else item_embeddings(dataset)
    scores = np.array([_score(parsed[i], meta[i], items, embed, cfg.recall_k) for i in kept])
    for i, s in zip(kept, scores, strict=True):
        chains[i]["score"] = float(s)
    times["validate_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    mining = mine(path_emb, scores, cfg.k_candidates, cfg.seed)
    for i, lab in zip(kept, mining.labels, strict=True):
        chains[i]["cluster"] = int(lab)
    ex = exemplars(path_emb, mining.labels, mining.best, cfg.exemplars)
    ex_paths = [parsed[kept[j]].path_text for j in ex]
    fallback = parsed[kept[ex[0]]].path_steps[: cfg.max_steps]
    template = abstract_template(llm, ex_paths, mining, cfg, fallback)
    template.update({"name": "discovered", "k": len(template["steps"]), "cluster": mining.best,
                     "exemplars": ex_paths, "dataset": cfg.dataset})
    times["mine_s"] = time.perf_counter() - t3

    clusters = {"k": mining.k, "silhouette_by_k": mining.silhouettes,
                "silhouette": mining.silhouettes.get(mining.k), "clusters": mining.clusters, "best": mining.best}
    report.update({"pruned_near_duplicates": len(ok) - len(kept), "scored": len(kept),
                   "mean_recall_at_20": float(scores.mean()), "template_source": template["source"],
                   "template": template["steps"], "times": times, "config": cfg.model_dump(mode="json")})
    write_json(out_dir / "chains.json", chains)
    write_json(out_dir / "clusters.json", clusters)
    write_json(out_dir / "template.json", template)
    write_json(out_dir / "report.json", report)
    log.info("GVM: %d/%d usable, %d after pruning, k=%d, template (%s): %s; wrote %s", len(ok), len(outputs),
             len(kept), mining.k, template["source"], " -> ".join(template["steps"]), describe_output(out_dir))
    return report


def load_template(spec: str, gvm_dir: Path | None = None) -> list[str]:
    """A manual template name (appendix F) or 'discovered' (template.json from a GVM run)."""
    if spec in prompts.MANUAL_TEMPLATES:
        return list(prompts.MANUAL_TEMPLATES[spec])
    if spec == "discovered":
        from scoter.io import read_json

        if gvm_dir is None:
            raise ValueError("template 'discovered' needs --gvm-dir (the output of `scoter reason discover`)")
        path = Path(gvm_dir) / "template.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `scoter reason discover` (if GVM found no usable "
                                    "chain, see its report.json and pick a manual --template)")
        steps = read_json(path).get("steps")
        if not isinstance(steps, list) or len(steps) < 2 or not all(isinstance(s, str) and s for s in steps):
            raise ValueError(f"{gvm_dir}/template.json: field 'steps' must list at least 2 step names")
        return steps
    raise ValueError(f"template: expected discovered or one of {sorted(prompts.MANUAL_TEMPLATES)}, got {spec!r}")
