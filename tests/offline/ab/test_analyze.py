"""`scoter ab analyze` on hand-made exposure and outcome files: attribution to the first exposure, request-id
joins, multi-variant users, SRM over users, the statistics against statsmodels' own functions, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("duckdb")
pytest.importorskip("statsmodels")

from offline.ab.analyze import first_exposures, per_user_metrics, read_outcomes, relative_lift, run  # noqa: E402
from scoter.cli import main  # noqa: E402


def _event(rid, ts, user, variant, experiment="exp", hist=2):
    return {"request_id": rid, "ts": ts, "user_id": user, "experiment": experiment, "variant": variant,
            "model_id": "m", "model_version": "1", "reasoning": "hit", "history_length": hist,
            "config_version": "v", "items": ["I1"]}


def _write_jsonl(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_outcomes_count_from_the_first_exposure_by_user_or_request(tmp_path):
    events = [_event("r1", 100.0, "a", "control"), _event("r2", 150.0, "a", "control"),
              _event("r3", 100.0, "b", "scoter"), _event("r4", 120.0, "c", "scoter"),
              _event("r5", 100.0, "d", "control"), _event("r6", 130.0, "d", "scoter")]  # d saw both: dropped
    exposures = pd.DataFrame(events)
    outcomes = tmp_path / "o.csv"
    pd.DataFrame([
        {"user_id": "a", "request_id": None, "timestamp": 99.0, "value": 50.0},   # before exposure: ignored
        {"user_id": "a", "request_id": None, "timestamp": 160.0, "value": 5.0},
        {"user_id": None, "request_id": "r3", "timestamp": 101.0, "value": 7.0},  # by request id -> b
        {"user_id": None, "request_id": "r3", "timestamp": 102.0, "value": 1.0},
        {"user_id": "c", "request_id": None, "timestamp": 110.0, "value": 9.0},   # before c's exposure
        {"user_id": "zz", "request_id": None, "timestamp": 200.0, "value": 3.0},  # never exposed
    ]).to_csv(outcomes, index=False)
    users, multi = first_exposures(exposures, "exp")
    assert multi == 1 and sorted(users["user_id"]) == ["a", "b", "c"]
    frame = per_user_metrics(users, exposures, read_outcomes(outcomes)).set_index("user_id")
    assert frame.loc["a", "first_ts"] == 100.0 and frame.loc["a", "revenue"] == 5.0 and frame.loc["a", "converted"] == 1
    assert frame.loc["b", "revenue"] == 8.0 and frame.loc["b", "converted"] == 1
    assert frame.loc["c", "revenue"] == 0.0 and frame.loc["c", "converted"] == 0


def test_conversion_lift_matches_statsmodels_ratio_interval():
    """The shared example: our lift for a rate equals statsmodels' two-sample ratio CI (log method)."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    rng = np.random.default_rng(3)
    control = (rng.random(9000) < 0.30).astype(float)
    treatment = (rng.random(9500) < 0.32).astype(float)
    lift = relative_lift(control, treatment)
    low, high = confint_proportions_2indep(treatment.sum(), len(treatment), control.sum(), len(control),
                                           method="log", compare="ratio")
    assert lift.relative == pytest.approx(treatment.mean() / control.mean() - 1, rel=1e-9)
    assert (lift.ci_low, lift.ci_high) == pytest.approx((low - 1, high - 1), rel=1e-7)


def test_revenue_lift_interval_is_the_log_scale_delta_method():
    """For a mean, the GLM's robust interval is the delta method on log(mean_t / mean_c)."""
    rng = np.random.default_rng(4)
    control = rng.exponential(10.0, 5000) * (rng.random(5000) < 0.4)
    treatment = rng.exponential(10.5, 5200) * (rng.random(5200) < 0.4)
    lift = relative_lift(control, treatment)
    se = np.sqrt(control.var() / (len(control) * control.mean() ** 2) +
                 treatment.var() / (len(treatment) * treatment.mean() ** 2))
    ratio = treatment.mean() / control.mean()
    assert (lift.ci_low, lift.ci_high) == pytest.approx((ratio * np.exp(-1.959964 * se) - 1,
                                                         ratio * np.exp(1.959964 * se) - 1), rel=1e-5)


def test_cli_reports_variants_holdout_segments_srm_and_writes_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    events, rows = [], []
    for i in range(3000):
        user = f"u{i}"
        if i % 20 == 0:
            events.append(_event(f"q{i}", 10.0, user, "holdout", experiment="hold"))
            continue
        variant = "scoter" if rng.random() < 0.5 else "control"
        events.append(_event(f"q{i}", 10.0, user, variant, hist=int(rng.integers(1, 9))))
        if rng.random() < (0.5 if variant == "scoter" else 0.4):
            rows.append({"user_id": user, "timestamp": "1970-01-01T00:00:20Z", "value": 2.0})
    exposures = _write_jsonl(tmp_path / "e.jsonl", events)
    pd.DataFrame(rows).to_csv(tmp_path / "o.csv", index=False)
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps({"holdout": {"key": "hold", "share": 0.05}, "experiments": [{"key": "exp", "variants": [
        {"name": "control", "weight": 0.5, "bundle": "a"}, {"name": "scoter", "weight": 0.5, "bundle": "b"}]}]}))
    rc = main(["ab", "analyze", "--exposures", str(exposures), "--outcomes", str(tmp_path / "o.csv"),
               "--experiments", str(cfg), "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    assert rc == 0 and "== exp" in out and "== hold" in out and "sparse (<=5)" in out
    report = json.loads((tmp_path / "r.json").read_text())["experiments"]
    exp = report[0]
    assert [g["group"] for g in exp["variants"]] == ["control", "scoter"] and exp["srm"]["p_value"] > 0.001
    lift = exp["variants"][1]["conversion_lift"]
    assert lift["ci_low"] > 0 and lift["ci_low"] < 0.25 < lift["ci_high"]  # planted 0.5 / 0.4 - 1
    assert sum(g["users"] for g in exp["variants"]) == 2850
    assert report[1]["experiment"] == "hold" and report[1]["variants"][0]["users"] == 150
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_srm_mismatch_is_reported_with_exit_code_1(tmp_path, capsys):
    events = [_event(f"r{i}", 1.0, f"u{i}", "control" if i % 3 else "scoter") for i in range(3000)]
    exposures = _write_jsonl(tmp_path / "e.jsonl", events)
    (tmp_path / "o.csv").write_text("user_id,timestamp,value\nu1,5,1.0\n")
    rc = main(["ab", "analyze", "--exposures", str(exposures), "--outcomes", str(tmp_path / "o.csv")])
    assert rc == 1 and "MISMATCH" in capsys.readouterr().out


@pytest.mark.parametrize("outcomes,needle", [
    ("user_id,value\nu1,1\n", "needs columns timestamp, value"),
    ("user_id,timestamp,value\nu1,yesterday,1\n", "timestamp in row 0"),
    ("user_id,timestamp,value\nu1,5,abc\n", "value in row 0"),
])
def test_bad_outcomes_name_the_problem(tmp_path, capsys, outcomes, needle):
    exposures = _write_jsonl(tmp_path / "e.jsonl", [_event("r", 1.0, "u1", "control"), _event("s", 1.0, "u2", "b")])
    (tmp_path / "o.csv").write_text(outcomes)
    rc = main(["ab", "analyze", "--exposures", str(exposures), "--outcomes", str(tmp_path / "o.csv")])
    assert rc == 2 and needle in capsys.readouterr().err


def test_unknown_experiment_and_missing_files_are_clear(tmp_path):
    exposures = _write_jsonl(tmp_path / "e.jsonl", [_event("r", 1.0, "u1", "control"), _event("s", 1.0, "u2", "b")])
    (tmp_path / "o.csv").write_text("user_id,timestamp,value\nu1,5,1.0\n")
    with pytest.raises(ValueError, match="no exposures for 'nope'"):
        run(str(exposures), tmp_path / "o.csv", experiment="nope")
    with pytest.raises(FileNotFoundError, match="--outcomes"):
        run(str(exposures), tmp_path / "missing.csv")
    (tmp_path / "bad.jsonl").write_text('{"user_id": "x"}\n')
    with pytest.raises(ValueError, match="lacks fields"):
        run(str(tmp_path / "bad.jsonl"), tmp_path / "o.csv")
