"""`scoter ab srm` and `scoter serve` (real uvicorn, two worker processes, multiprocess metrics)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scoter.cli import main
from scoter.testing import free_port
from service.experiments import assign, load_config
from service.srm import counts_from_metrics_text, srm_test

ROOT = Path(__file__).resolve().parents[2]


def test_srm_statistics():
    ok = srm_test({"control": 5030, "scoter": 4970}, {"control": 0.5, "scoter": 0.5})
    assert not ok.mismatch and ok.p_value > 0.5
    bad = srm_test({"control": 5300, "scoter": 4700}, {"control": 0.5, "scoter": 0.5})
    assert bad.mismatch and bad.p_value < 1e-6
    uneven = srm_test({"control": 2000, "scoter": 8000}, {"control": 0.2, "scoter": 0.8})
    assert not uneven.mismatch and uneven.chi2 == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not in the weights"):
        srm_test({"other": 3}, {"control": 0.5, "scoter": 0.5})


def test_counts_from_exposition_text():
    text = ('# TYPE scoter_exposures_total counter\n'
            'scoter_exposures_total{experiment="e1",variant="control"} 10.0\n'
            'scoter_exposures_total{experiment="e1",variant="scoter"} 12.0\n'
            'scoter_exposures_total{experiment="e2",variant="control"} 3.0\n')
    assert counts_from_metrics_text(text) == {"e1": {"control": 10, "scoter": 12}, "e2": {"control": 3}}
    assert counts_from_metrics_text(text, "e2") == {"e2": {"control": 3}}


def test_srm_cli_from_counts_file(tmp_path, capsys):
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({"control": 5300, "scoter": 4700}))
    weights = '{"control": 0.5, "scoter": 0.5}'
    assert main(["ab", "srm", "--counts", str(counts), "--weights", weights]) == 1
    assert json.loads(capsys.readouterr().out)["mismatch"] is True
    counts.write_text(json.dumps({"control": 5010, "scoter": 4990}))
    assert main(["ab", "srm", "--counts", str(counts), "--weights", weights]) == 0
    counts.write_text(json.dumps({"control": "many"}))
    assert main(["ab", "srm", "--counts", str(counts), "--weights", weights]) == 2
    assert "counts must be integers" in capsys.readouterr().err


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def test_serve_two_workers_aggregates_metrics_and_srm_reads_them(tmp_path, bundle_dir):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"experiments:\n  - key: cli-ab\n    seed: s\n    variants:\n"
                   f"      - {{name: control, weight: 0.5, bundle: {bundle_dir}}}\n"
                   f"      - {{name: scoter, weight: 0.5, bundle: {bundle_dir}}}\n")
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir), "SCOTER_WARMUP_RUNS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "scoter.cli", "serve", "--experiments", str(exp), "--port",
                             str(port), "--workers", "2", "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        n = 40
        with httpx.Client(base_url=url, timeout=10) as client:
            for i in range(n):  # new connections spread requests over both workers
                r = httpx.post(f"{url}/v1/recommendations", json={"user_id": f"cli{i}", "history": ["I00001"]})
                assert r.status_code == 200, r.text
            text = client.get("/metrics").text
        exposures = {s.labels["variant"]: s.value for fam in text_string_to_metric_families(text)
                     for s in fam.samples if s.name == "scoter_exposures_total"}
        active = load_config(exp).config.active
        expected = Counter(assign(active, f"cli{i}").variant for i in range(n))
        assert exposures == {v: float(c) for v, c in expected.items()}  # summed over both worker processes
        pids = {p.name.split("_")[-1] for p in prom_dir.glob("*.db")}
        assert len(pids) >= 2
        rc = main(["ab", "srm", "--metrics-url", f"{url}/metrics", "--experiments", str(exp)])
        p = srm_test(dict(expected), {"control": 0.5, "scoter": 0.5}).p_value
        assert rc == (1 if p < 0.001 else 0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
