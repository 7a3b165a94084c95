"""Reasoning pipeline on Beauty with the embedded SmolLM2-135M on a 2-core CPU, in stages that can run in
separate processes (one thread each) and resume after a kill (LLM answers are cached per chunk, each stage
writes its output atomically and skips itself when that output exists):

  speed     tokens/s of the batched decoder (shared-prefix KV cache, grammar) vs transformers' generate()
  discover  GVM (grounded prompts, grammar-constrained answers) on --gvm-users validation users -> template
  teacher   hindsight teacher chains (training rows: history seq[:-3], told seq[-3]) for --teacher-users
            users with the discovered template -> encoder student (held-out fidelity) -> H for every user
  lora      the paper's LoRA student on the teacher's chains (time-boxed) and its held-out fidelity
  validate  Validate Recall@20 of the teacher's recommendations per prompt variant on --validate-users
            (--validate-after N: only the sample's users beyond the first N, each figure extending the results
            file's entry over those N, so a larger sample grows from an earlier run)
  report    gathers the stages into benchmarks/results/beauty_reasoning.json

--generate-only runs a stage's LLM work and nothing else (no sentence encoder, no scoring): the answers land in
the stage's cache (validate), teacher_chains_oracle.json (teacher) or lora_chains.json (lora), and the same
stage run later without the flag scores them from there. It is how the LLM work goes to a GPU machine
(benchmarks/gpu_reasoning.sh) while the encoder work stays here.

  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/reasoning.py --stage discover
  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/reasoning.py --stage teacher  &   # two processes,
  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/reasoning.py --stage validate &   # one thread each
  PYTHONPATH=. python benchmarks/reasoning.py --stage report"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from scoter.paths import REPO_ROOT, artifacts_root
from scoter.provenance import git_commit, machine

log = logging.getLogger("benchmarks.reasoning")


def _llm(out: Path, name: str, batch_size: int, engine: str = "torch", threads: int = 1) -> Any:
    from offline.reasoning.config import LocalLLMConfig
    from offline.reasoning.local_backend import LocalLLM

    return LocalLLM(LocalLLMConfig(batch_size=batch_size, engine=engine, num_threads=threads),
                    cache_path=out / f"llm_cache_{name}.jsonl")


def _machine() -> str:
    """This machine, with its GPU when torch sees one (where the LLM work ran)."""
    import torch

    return machine(torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def _gvm_cfg(args: argparse.Namespace, **kw: Any) -> Any:
    from offline.reasoning.config import GVMConfig

    return GVMConfig(dataset=args.dataset, max_steps=args.max_steps, **kw)


def stage_speed(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Same grounded prompts through both engines, same batch size, prefill included."""
    from offline.reasoning import corpus
    from offline.reasoning.config import SamplingParams
    from offline.reasoning.gvm import variant_examples

    ds = corpus.load(args.dataset)
    rows = corpus.sample_users(ds, args.speed_prompts, 7)
    ex = variant_examples(_gvm_cfg(args), ds, rows)
    chats = [e["chat"] for e in ex]
    res: dict[str, Any] = {"prompts": len(chats), "max_new_tokens": args.speed_tokens}
    for engine, bs in (("hf", 1), ("hf", args.batch_size), ("torch", args.batch_size)):
        llm = _llm(out, "speed", bs, engine)
        llm.cache = None  # measure generation, not the cache
        params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=args.speed_tokens, seed=0)
        t0 = time.perf_counter()
        texts = llm.generate(chats, params)
        wall = time.perf_counter() - t0
        res[f"{engine}_bs{bs}"] = {"generated_tokens": llm.generated_tokens, "wall_s": round(wall, 1),
                                   "tokens_per_s": llm.generated_tokens / wall, "sample": texts[0][:200]}
        log.info("speed %s bs=%d: %.1f tok/s", engine, bs, llm.generated_tokens / wall)
    return res


def stage_discover(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from offline.reasoning import corpus
    from offline.reasoning.gvm import run_gvm

    ds = corpus.load(args.dataset)
    llm = _llm(out, "discover", args.batch_size, threads=args.threads)
    t0 = time.perf_counter()
    cfg = _gvm_cfg(args, variant="grounded", users=args.gvm_users, temperature=0.7, step_words=8,
                   reason_chars=100)  # discovery: the paper's 8 words per step, a longer reason
    report = run_gvm(cfg, llm, ds, out / "gvm")
    report["wall_s"] = time.perf_counter() - t0
    report["tokens_per_s"] = llm.tokens_per_second
    report["generated_tokens"] = llm.generated_tokens
    return report


def stage_teacher(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import numpy as np

    from offline.reasoning import corpus, pipeline
    from offline.reasoning.config import DistillConfig, EncoderStudentConfig
    from offline.reasoning.gvm import load_template

    ds = corpus.load(args.dataset)
    steps = load_template(args.template, out / "gvm")
    llm = _llm(out, "teacher", args.batch_size, threads=args.threads)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    dcfg = DistillConfig(dataset=args.dataset, template=args.template, teacher_users=args.teacher_users,
                         oracle=True, teacher_mode="structured", step_max_tokens=24,
                         max_seconds=args.max_seconds, chunk_rows=max(64, 4 * args.batch_size))
    teacher = pipeline.run_teacher(llm, ds, steps, dcfg, out)
    times["teacher_s"] = time.perf_counter() - t0
    if args.generate_only:
        return {"template": steps, "teacher": teacher["report"], "times": times}
    ecfg = EncoderStudentConfig(epochs=args.epochs)
    t0 = time.perf_counter()
    student, srep = pipeline.train_encoder_student(ds, teacher, ecfg, out)
    times["encoder_student_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = pipeline.precompute_h(student, ds, out, ecfg)
    times["precompute_h_all_users_s"] = time.perf_counter() - t0
    pipeline.write_meta(out, ds, steps, {
        "template_name": args.template, "teacher": "hindsight (R2END oracle-guided), grounded prompt, "
        "grammar-constrained, SmolLM2-135M-Instruct", "teacher_chains": teacher["report"]["accepted"]})
    h = np.load(out / "H_test.npy", mmap_mode="r")
    return {"template": steps, "teacher": teacher["report"], "encoder_student": srep,
            "precompute": {**prep, "H_shape": list(h.shape)}, "times": times}


def stage_lora(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The paper's LoRA student: LoRA on the accepted teacher chains outside the encoder student's held-out set,
    for --lora-seconds; then it writes chains (its training format, under a grammar) for --lora-eval-users of the
    held-out users (-> lora_chains.json, which a later run scores instead of training again). Fidelity is the
    cosine of their step embeddings to the teacher's, next to the encoder student's on the same users."""
    from offline.reasoning import corpus, pipeline, prompts
    from offline.reasoning.config import DistillConfig, LocalLLMConfig, LoraStudentConfig
    from offline.reasoning.students import LoraStudent, student_texts
    from scoter.io import read_json, write_json

    ds = corpus.load(args.dataset)
    teacher = read_json(out / "teacher_chains_oracle.json")
    steps, k = teacher["steps"], len(teacher["steps"])
    ok = [r for r in teacher["records"] if r["steps"] is not None]
    ho, tr = pipeline.heldout_split(ok)  # the encoder student's held-out users
    held, train = ok[ho][:args.lora_eval_users], ok[tr]
    path = out / "lora_chains.json"
    if path.exists():
        run = read_json(path)
        log.info("LoRA student: chains loaded from %s (trained on %s)", path, run.get("machine"))
    else:
        items = DistillConfig().history_items
        chat = lambda r: prompts.distill_chat(steps, corpus.texts(ds, r["history"]), max_items=items)  # noqa: E731
        cfg = LoraStudentConfig(steps=10**6, max_seconds=args.lora_seconds, max_length=args.lora_max_length,
                                batch_size=args.lora_batch_size, gen_batch_size=args.batch_size)
        student = LoraStudent(cfg, LocalLLMConfig(num_threads=args.threads))
        losses = student.fit([chat(r) for r in train], [prompts.format_chain(steps, r["steps"]) for r in train])
        student.save(out / "lora_adapter")
        chains, gen = student.write_chains([chat(r) for r in held], steps)
        seen = int(student.train_steps * cfg.batch_size)
        run = {"machine": _machine(), "users": [r["user"] for r in held], "chains": chains,
               "train": {"train_chains": len(train), "chains_seen": seen, "epochs_seen": seen / max(len(train), 1),
                         "train_steps": student.train_steps, "loss_first": losses[0], "loss_last": losses[-1],
                         "loss_last10_mean": sum(losses[-10:]) / len(losses[-10:]),
                         "train_seconds": student.train_seconds,
                         "train_tokens_per_second": student.train_tokens / max(student.train_seconds, 1e-9)},
               "generation": gen, "config": cfg.model_dump(mode="json")}
        write_json(path, run)
    if args.generate_only:
        return {k_: v for k_, v in run.items() if k_ != "chains"}
    by_user = dict(zip(run["users"], run["chains"], strict=True))
    held = [r for r in held if r["user"] in by_user]
    chains = [by_user[r["user"]] for r in held]
    return {**run["train"], "machine": run["machine"], "eval_users": len(held),
            "generation": {k_: v for k_, v in run["generation"].items() if k_ != "raw_examples"},
            **_lora_fidelity(ds, held, train, chains, k, out),
            "examples": [{"user": r["user"], "history_tail": student_texts(ds, [r["history"]], 3)[0],
                          "teacher": r["steps"], "lora_student": c} for r, c in zip(held[:3], chains, strict=False)],
            "config": run["config"]}


def _lora_fidelity(ds: Any, held: list[dict[str, Any]], train: list[dict[str, Any]],
                   chains: list[list[str] | None], k: int, out: Path) -> dict[str, Any]:
    """The LoRA student's chains and the encoder student's H against the teacher's, on the same held-out users."""
    from offline.reasoning import pipeline
    from offline.reasoning.encode import chains_to_h

    h_lora, present = chains_to_h(chains, k)
    h_teacher, _ = chains_to_h([r["steps"] for r in held], k)
    h_mean, _ = chains_to_h([r["steps"] for r in train[:1000]], k)  # the constant-H baseline's mean
    encoder, _ = pipeline.load_encoder_student(out / "encoder_student.pt")
    texts, pooled = pipeline._student_inputs(ds, [r["history"] for r in held], encoder.config)
    h_enc = encoder.predict(texts, pooled=pooled)
    return {"lora_fidelity": pipeline.fidelity(h_lora[present], h_teacher[present], h_mean),
            "encoder_fidelity_same_users": pipeline.fidelity(h_enc[present], h_teacher[present], h_mean)}


def stage_validate(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Variants interleaved chunk by chunk on the same users, so a deadline leaves them equally far."""
    from offline.reasoning import corpus
    from offline.reasoning.encode import item_embeddings
    from offline.reasoning.grounding import Grounding
    from offline.reasoning.gvm import load_template, mean_se, validate_variant
    from scoter.io import write_json

    ds = corpus.load(args.dataset)
    g = Grounding(ds)
    llm = _llm(out, f"validate{_tag(args)}", args.batch_size, threads=args.threads)
    rows = corpus.sample_users(ds, args.validate_users, 11)
    if args.validate_after:  # the same seeded sample, without the users an earlier run already scored
        first = set(corpus.sample_users(ds, args.validate_after, 11))
        rows = [u for u in rows if u not in first]
    jobs: list[tuple[str, str, list[str] | None]] = [(v, v, None) for v in args.variants.split(",") if v]
    if args.template_users:
        for name in args.templates.split(","):
            jobs.append((f"grounded+{name}", "grounded", load_template(name, out / "gvm")))
    if args.generate_only:
        return _validate_generate(args, ds, g, llm, rows, jobs)
    items = item_embeddings(ds)
    acc: dict[str, dict[str, Any]] = {k: {"scores": [], "cand": [], "scores@10": [], "cand@10": [], "ok": [],
                                          "seconds": 0.0, "tokens": 0, "examples": []} for k, _, _ in jobs}
    earlier: dict[str, Any] = {}
    if args.validate_after:
        earlier = _continue_earlier(args, ds, g, acc)
    res: dict[str, Any] = {}
    for start, chunk, active in _rounds(args, rows, jobs):
        for key, variant, steps in active:
            r = validate_variant(_gvm_cfg(args, variant=variant), llm, ds, rows=chunk, fixed_path=steps,
                                 grounding=g, item_emb=items)
            a = acc[key]
            a["scores"] += r["scores"]
            a["cand"] += r["candidate_scores"]
            a["scores@10"] += r["rerank_scores"]  # GVMConfig.rerank_k, 10 by default
            a["cand@10"] += r["candidate_rerank_scores"]
            a["ok"] += r["well_formed"]
            a["seconds"] += r["seconds"]
            a["tokens"] += r["generated_tokens"]
            a["examples"] = a["examples"] or r["examples"]
        res = {}
        for key, _, steps in jobs:
            a = acc[key]
            m, se = mean_se(a["scores"])
            cm, cse = mean_se(a["cand"])
            m10, se10 = mean_se(a["scores@10"])
            cm10, cse10 = mean_se(a["cand@10"])
            res[key] = {"template": steps, "users": len(a["scores"]), "recall@20": m, "recall@20_se": se,
                        "candidates_recall@20": cm, "candidates_recall@20_se": cse,
                        "recall@10": m10, "recall@10_se": se10, "candidates_recall@10": cm10,
                        "candidates_recall@10_se": cse10, "paired_vs_candidates@10": paired_se(
                            a["scores@10"], a["cand@10"]) if len(a["cand@10"]) == len(a["scores@10"]) else None,
                        "well_formed_rate": float(sum(a["ok"]) / max(len(a["ok"]), 1)), "seconds": a["seconds"],
                        "user_scores": a["scores"], "user_scores@10": a["scores@10"],
                        "generated_tokens": a["tokens"], "examples": a["examples"],
                        **({"continues": earlier[key]} if key in earlier else {})}
        write_json(out / f"validate{_tag(args)}" / "progress.json", res)
        log.info("validate after %d users: %s", start + args.chunk, json.dumps(
            {k: (v["recall@20"], v["recall@20_se"], v["well_formed_rate"]) for k, v in res.items()}))
    return res


def _continue_earlier(args: argparse.Namespace, ds: Any, g: Any, acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Seeds each job's tallies with the --results entry over the first --validate-after users (its per-user
    scores; the candidates' own hits recomputed, they need no LLM), so this run's rows extend that sample and
    every figure covers both; returns where each earlier part comes from."""
    from offline.reasoning import corpus
    from scoter.io import read_json

    results = read_json(Path(args.results))
    prev, n = results.get("validate") or {}, args.validate_after
    cfg = _gvm_cfg(args)
    hits = candidate_hits(ds, g, corpus.sample_users(ds, n, 11), (cfg.recall_k, cfg.rerank_k), cfg.candidates)
    origin = {}
    for key, a in acc.items():
        old = prev.get(key) or {}
        if old.get("users") != n or len(old.get("user_scores@10") or []) != n:
            raise ValueError(f"--validate-after {n}: {args.results} has no '{key}' entry with per-user scores of "
                             f"{n} users")
        ok = round(old["well_formed_rate"] * n)
        a.update(scores=list(old["user_scores"]), cand=hits[0], ok=[True] * ok + [False] * (n - ok),
                 seconds=float(old["seconds"]), tokens=int(old["generated_tokens"]), examples=old["examples"])
        a["scores@10"], a["cand@10"] = list(old["user_scores@10"]), hits[1]
        origin[key] = {"users": n, "seconds": a["seconds"], "generated_tokens": a["tokens"],
                       **(results.get("carried_over", {}).get(f"validate:{key}")
                          or {"date": results.get("date"), "git_commit": results.get("git_commit")})}
    return origin


def _validate_generate(args: argparse.Namespace, ds: Any, g: Any, llm: Any, rows: list[int],
                       jobs: list[tuple[str, str, list[str] | None]]) -> dict[str, Any]:
    """Validate's answers into its cache, round by round (--chunk users, every job in turn, so a deadline leaves
    the jobs equally far); the users a later scoring run can take from the cache are `users_done`."""
    from offline.reasoning.gvm import structured_generate, variant_examples

    res: dict[str, Any] = {"jobs": {key: {"users": 0, "seconds": 0.0, "generated_tokens": 0} for key, _, _ in jobs}}
    t0, done = time.perf_counter(), 0
    for start, chunk, active in _rounds(args, rows, jobs):
        for key, variant, steps in active:
            cfg = _gvm_cfg(args, variant=variant)
            t1, tok0 = time.perf_counter(), llm.generated_tokens
            structured_generate(llm, variant_examples(cfg, ds, chunk, g, steps), cfg, cfg.seed, steps)
            j = res["jobs"][key]
            j["users"] += len(chunk)
            j["seconds"] += time.perf_counter() - t1
            j["generated_tokens"] += llm.generated_tokens - tok0
        done = start + len(chunk)
    wall = time.perf_counter() - t0
    res.update(users_done=done, generated_tokens=llm.generated_tokens, seconds=wall,
               tokens_per_s=llm.generated_tokens / max(wall, 1e-9))
    return res


def _rounds(args: argparse.Namespace, rows: list[int], jobs: list[tuple[str, str, list[str] | None]]) -> Any:
    """(first row, the round's --chunk rows, the jobs that take them) until --max-seconds: every job's chunk in
    turn, so a deadline leaves the jobs equally far; a template job stops after --template-users."""
    t0 = time.perf_counter()
    for start in range(0, len(rows), args.chunk):
        if args.max_seconds and time.perf_counter() - t0 > args.max_seconds:
            log.warning("validate: max_seconds reached after %d users", start)
            return
        yield start, rows[start:start + args.chunk], [j for j in jobs if not (j[2] and start >= args.template_users)]


def _tag(args: argparse.Namespace) -> str:
    """A suffix for a stage's files, so that two processes of one stage (e.g. Validate of the manual templates
    and of the mined one) can run side by side in one folder."""
    return f"_{args.tag}" if args.tag else ""


def paired_se(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean of a - b over the same users, with its standard error."""
    from offline.reasoning.gvm import mean_se

    m, se = mean_se([x - y for x, y in zip(a, b, strict=True)])
    return {"diff": m, "se": se}


def stage_report(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Gathers the stages in `out` into --results. A stage not run in `out` keeps its entry from the results file
    already there, and `carried_over` names the date and commit it comes from: stages run on different days
    then add up to one report, each entry with its own provenance."""
    from scoter.io import read_json

    def load(name: str) -> Any:
        p = out / "stages" / f"{name}.json"
        return read_json(p) if p.exists() else None

    prev = read_json(Path(args.results)) if Path(args.results).exists() else {}
    origin = {"date": prev.get("date"), "git_commit": prev.get("git_commit")}
    carried: dict[str, Any] = {}

    def stage(name: str, prev_key: str) -> Any:
        got = load(name)
        if got is None and prev.get(prev_key) is not None:
            got, carried[prev_key] = prev[prev_key], prev.get("carried_over", {}).get(prev_key, origin)
        return got

    speed, disc, teach, lora = (stage("speed", "speed"), stage("discover", "gvm"), stage("teacher", "teacher_stage"),
                                stage("lora", "lora_student"))
    val = {k: v for k, v in (prev.get("validate") or {}).items() if isinstance(v, dict)}  # one entry per variant
    fresh: dict[str, Any] = {}
    for p in sorted((out / "stages").glob("validate*.json")) + sorted(out.glob("validate*/progress.json")):
        entries = read_json(p)
        # per variant the entry over the most users (a run that extends another's sample); on a tie the first,
        # so a finished stage file wins over its progress file
        for k, v in entries.items():
            if isinstance(v, dict) and (k not in fresh or v["users"] > fresh[k]["users"]):
                fresh[k] = v
    for k in val:
        if k not in fresh:
            carried[f"validate:{k}"] = prev.get("carried_over", {}).get(f"validate:{k}", origin)
    val.update(fresh)
    tr = (teach or {}).get("teacher", {})
    return {
        **_candidate_reference(args),
        "benchmark": "reasoning", "dataset": args.dataset, "model": "SmolLM2-135M-Instruct (packaged GGUF, "
        "de-quantised; float32 on a CPU without BF16 matmuls, bfloat16 on a GPU)", "machine": machine(),
        "llm_work_elsewhere": {p.stem: {k: v for k, v in read_json(p).items() if k != "users"}
                               for p in sorted((out / "stages").glob("generate_*.json"))},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
        "h_dir": str(out), "carried_over": carried,
        "tokens_per_s": tr.get("tokens_per_second"),
        "chains": tr.get("accepted"), "chains_per_hour": tr.get("chains_per_hour"),
        "well_formed_rate": None if not disc else 1 - disc["malformed_rate"],
        "validate_recall@20": {k: v["recall@20"] for k, v in val.items()},
        "validate_recall@20_se": {k: v["recall@20_se"] for k, v in val.items()},
        "validate_well_formed_rate": {k: v["well_formed_rate"] for k, v in val.items()},
        "validate_candidates_recall@20": {k: v.get("candidates_recall@20") for k, v in val.items()},
        "validate_recall@10": {k: v.get("recall@10") for k, v in val.items()},
        "validate_candidates_recall@10": {k: v.get("candidates_recall@10") for k, v in val.items()},
        "validate_paired_vs_candidates@10": {k: v.get("paired_vs_candidates@10") for k, v in val.items()},
        "validate_users": {k: v["users"] for k, v in val.items()},
        "template_comparison": template_comparison(val),
        "validate_runs": validate_runs(out),
        "wall_s": {"discover": (disc or {}).get("wall_s"), **((teach or {}).get("times", {})),
                   "lora_train": (lora or {}).get("train_seconds"),
                   **{f"validate_{k}": v["seconds"] for k, v in val.items()}},
        "speed": speed, "gvm": disc, "teacher_stage": teach, "lora_student": lora, "validate": val,
    }


def validate_runs(out: Path) -> dict[str, Any]:
    """Each Validate stage file's run: its command, machine and wall time, and the tokens it generated itself (an
    entry that `continues` an earlier sample less that part's), so runs side by side add up to a machine's rate."""
    from scoter.io import read_json

    runs = {}
    for p in sorted((out / "stages").glob("validate*.json")):
        st = read_json(p)
        new = sum(v["generated_tokens"] - (v.get("continues") or {}).get("generated_tokens", 0)
                  for v in st.values() if isinstance(v, dict) and "generated_tokens" in v)
        runs[p.stem] = {k: st.get(k) for k in ("command", "date", "git_commit", "machine", "stage_wall_s")}
        runs[p.stem].update(generated_tokens=new, tokens_per_s=new / st["stage_wall_s"])
    return runs


def template_comparison(val: dict[str, Any], mined: str = "grounded+discovered") -> dict[str, Any]:
    """Recall@20 (and @10 of the answer's first 10) of the mined template minus each manual one's, paired over
    the same Validate users (the rows are the same sample in the same order in every Validate run, so their
    common prefix pairs them)."""
    if mined not in val or "user_scores" not in val[mined]:
        return {}
    res = {}
    for k, v in val.items():
        if k != mined and k.startswith("grounded+") and "user_scores" in v:
            for suffix, at in (("", "@20"), ("@10", "@10")):
                a, b = val[mined].get(f"user_scores{suffix}"), v.get(f"user_scores{suffix}")
                if a and b:
                    n = min(len(a), len(b))
                    res.setdefault(f"{mined} - {k}", {})[at] = {**paired_se(a[:n], b[:n]), "users": n}
    return res


def candidate_hits(ds: Any, g: Any, rows: list[int], ks: tuple[int, ...], n: int = 20) -> list[list[float]]:
    """Per k, whether each row's validation target seq[-2] is among the first k of its n grounding candidates
    (co-occurrence over seq[:-2]; no LLM)."""
    cands = [g.candidates(ds.sequences[u][:-2], n)[0] for u in rows]
    return [[float(int(ds.sequences[u][-2]) in c[:k]) for u, c in zip(rows, cands, strict=True)] for k in ks]


def _candidate_reference(args: argparse.Namespace) -> dict[str, Any]:
    """Recall@20 of the grounding candidate list alone (no LLM) on the Validate users: the ceiling of what a
    grounded answer can reach by picking candidates, and the floor a useful LLM should beat by reranking."""
    from offline.reasoning import corpus
    from offline.reasoning.grounding import Grounding
    from offline.reasoning.gvm import mean_se

    ds = corpus.load(args.dataset)
    rows = corpus.sample_users(ds, args.validate_users, 11)
    m, se = mean_se(candidate_hits(ds, Grounding(ds), rows, (20,))[0])
    return {"grounding_candidates_recall@20": m, "grounding_candidates_recall@20_se": se,
            "grounding_candidates_users": len(rows)}


STAGES = {"speed": stage_speed, "discover": stage_discover, "teacher": stage_teacher, "lora": stage_lora,
          "validate": stage_validate, "report": stage_report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=list(STAGES), required=True)
    ap.add_argument("--dataset", default="beauty")
    ap.add_argument("--out", default=None, help="default artifacts/<dataset>/reasoning_v2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--gvm-users", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=4, help="longest reasoning path / template")
    ap.add_argument("--template", default="discovered")
    ap.add_argument("--teacher-users", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lora-seconds", type=float, default=1200, help="lora: training wall time")
    ap.add_argument("--lora-max-length", type=int, default=320, help="lora: tokens per training pair")
    ap.add_argument("--lora-eval-users", type=int, default=64, help="lora: held-out users it writes chains for")
    ap.add_argument("--validate-users", type=int, default=500)
    ap.add_argument("--variants", default="grounded,plain,hindsight")
    ap.add_argument("--templates", default="discovered,two_step,three_step,five_step")
    ap.add_argument("--template-users", type=int, default=0, help="users per template comparison (0 = skip)")
    ap.add_argument("--validate-after", type=int, default=0,
                    help="validate: skip the first N users of the sample and extend --results' entries over them")
    ap.add_argument("--chunk", type=int, default=32, help="validate: users per variant per round")
    ap.add_argument("--max-seconds", type=float, default=None, help="validate/teacher: stop new work after this")
    ap.add_argument("--tag", default="", help="suffix of this run's stage, progress and cache files")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the LLM work")
    ap.add_argument("--lora-batch-size", type=int, default=4, help="lora: pairs per training step")
    ap.add_argument("--generate-only", action="store_true",
                    help="teacher/lora/validate: the LLM work alone, scored by a later run without the flag")
    ap.add_argument("--speed-prompts", type=int, default=32)
    ap.add_argument("--speed-tokens", type=int, default=32)
    ap.add_argument("--results", default=str(REPO_ROOT / "benchmarks" / "results" / "beauty_reasoning.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from scoter.io import write_json

    torch.set_num_threads(args.threads)
    out = Path(args.out or artifacts_root() / args.dataset / "reasoning_v2")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = STAGES[args.stage](args, out)
    if args.stage == "report":
        write_json(Path(args.results), result)
        print(json.dumps({k: result[k] for k in ("tokens_per_s", "chains", "well_formed_rate",
                                                 "validate_recall@20", "validate_recall@20_se")}, indent=1))
        return
    result = {"stage": args.stage, "command": "OMP_NUM_THREADS=1 PYTHONPATH=. python " + " ".join(sys.argv),
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
              "machine": _machine(), "stage_wall_s": time.perf_counter() - t0, **result}
    name = f"{'generate_' if args.generate_only else ''}{args.stage}{_tag(args)}"
    write_json(out / "stages" / f"{name}.json", result)
    log.info("stage %s done in %.0fs", args.stage, result["stage_wall_s"])


if __name__ == "__main__":
    main()
