"""`scoter ab analyze`: join outcomes to each user's first exposure and report lift per variant and for the holdout.

Method, as the experimentation platforms do it:
- unit = user. Each user's first exposure to the experiment starts their window; outcomes (user_id or
  request_id, timestamp, value) count when they happen at or after it. A user exposed to two variants of one
  experiment is dropped from it (and counted), as GrowthBook does with "multiple exposures".
- metrics per user: converted (any outcome) and revenue (sum of values); per group: users, conversion rate,
  revenue per user.
- lift of each variant over control: relative difference of the means, from a log-link GLM with a robust (HC0)
  covariance (statsmodels): exp(b) - 1 with the 95% interval exp(b +- z se) - 1. For a conversion rate this is
  exactly statsmodels' `confint_proportions_2indep(method="log", compare="ratio")` (tests check it).
- SRM over unique users (chi-squared against the configured weights, alpha = 0.001).
- a breakdown by a user dimension: a segments file (user_id, segment), else history length at first exposure
  (sparse: at most `sparse_max` items; the paper's Table 5 split).
The joins run in DuckDB; per-user frames come back as pandas.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

Z95 = 1.959963984540054
HOLDOUT_VARIANT = "holdout"
EXPOSURE_COLUMNS = ["request_id", "ts", "user_id", "experiment", "variant", "history_length"]


# ---- inputs ------------------------------------------------------------------------------------------------
def read_exposures(source: str) -> pd.DataFrame:
    """Exposure events from a Redis stream (`redis://host:port/db?stream=scoter:exposures`) or a JSONL/Parquet
    file, as a frame with EXPOSURE_COLUMNS."""
    from service.exposures import is_stream_url

    if is_stream_url(source):
        return _read_stream(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"--exposures: {path} does not exist")
    con = duckdb.connect()
    if path.suffix == ".parquet":
        rel = con.read_parquet(str(path))
    else:
        rel = con.read_json(str(path), format="newline_delimited")
    missing = [c for c in EXPOSURE_COLUMNS if c not in rel.columns]
    if missing:
        raise ValueError(f"--exposures: {path} lacks fields {missing} (have {rel.columns})")
    return rel.select(*EXPOSURE_COLUMNS).df()


def _read_stream(url: str) -> pd.DataFrame:
    from service.exposures import read_stream

    frame = pd.DataFrame(list(read_stream(url)), columns=[*EXPOSURE_COLUMNS, "items"])
    log.info("read %d exposure events from %s", len(frame), url)
    return frame[EXPOSURE_COLUMNS]


def read_outcomes(path: Path) -> pd.DataFrame:
    """CSV or Parquet with user_id and/or request_id, timestamp (epoch seconds or ISO), value."""
    if not Path(path).exists():
        raise FileNotFoundError(f"--outcomes: {path} does not exist")
    con = duckdb.connect()
    rel = con.read_parquet(str(path)) if Path(path).suffix == ".parquet" else con.read_csv(str(path))
    cols = set(rel.columns)
    if not {"timestamp", "value"} <= cols or not cols & {"user_id", "request_id"}:
        raise ValueError(f"--outcomes: {path} needs columns timestamp, value and user_id or request_id "
                         f"(have {sorted(cols)})")
    df = rel.df()
    for c in ("user_id", "request_id"):
        if c not in df:
            df[c] = None
    ts = df["timestamp"]
    if not pd.api.types.is_numeric_dtype(ts):
        ts = pd.to_datetime(ts, utc=True, errors="coerce")
        if ts.isna().any():
            raise ValueError(f"--outcomes: timestamp in row {int(ts.isna().to_numpy().argmax())} is not a time")
        ts = (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds()  # whatever the datetime unit
    value = pd.to_numeric(df["value"], errors="coerce")
    if value.isna().any() or not np.isfinite(value.to_numpy()).all():
        raise ValueError(f"--outcomes: value in row {int((~np.isfinite(value.fillna(np.nan))).to_numpy().argmax())}"
                         " is not a finite number")
    return pd.DataFrame({"user_id": df["user_id"].astype("string"), "request_id": df["request_id"].astype("string"),
                         "ts": ts.astype(float), "value": value.astype(float)})


# ---- per-user frames ---------------------------------------------------------------------------------------
def first_exposures(exposures: pd.DataFrame, experiment: str) -> tuple[pd.DataFrame, int]:
    """user_id, variant, first_ts, history_length (at first exposure) for one experiment; users seen in more
    than one variant are dropped (returned count)."""
    con = duckdb.connect()
    con.register("e", exposures)
    users = con.execute("""
        SELECT user_id, min(variant) AS variant, count(DISTINCT variant) AS n_variants, min(ts) AS first_ts,
               arg_min(history_length, ts) AS history_length
        FROM e WHERE experiment = ? GROUP BY user_id""", [experiment]).df()
    multi = int((users["n_variants"] > 1).sum())
    return users[users["n_variants"] == 1].drop(columns="n_variants").reset_index(drop=True), multi


def per_user_metrics(users: pd.DataFrame, exposures: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """users + converted (0/1) and revenue: outcomes at or after the user's first exposure, by user id or by a
    request id that exposure events tie to the user."""
    con = duckdb.connect()
    con.register("u", users)
    con.register("e", exposures[["request_id", "user_id"]])
    con.register("o", outcomes)
    return con.execute("""
        WITH o_user AS (
            SELECT coalesce(o.user_id, r.user_id) AS user_id, o.ts, o.value
            FROM o LEFT JOIN (SELECT DISTINCT request_id, user_id FROM e) r ON o.user_id IS NULL
                                                                       AND o.request_id = r.request_id),
        post AS (
            SELECT u.user_id, count(*) AS events, sum(o_user.value) AS revenue
            FROM u JOIN o_user ON o_user.user_id = u.user_id AND o_user.ts >= u.first_ts GROUP BY u.user_id)
        SELECT u.*, (coalesce(post.events, 0) > 0)::INTEGER AS converted, coalesce(post.revenue, 0.0) AS revenue
        FROM u LEFT JOIN post USING (user_id) ORDER BY u.user_id""").df()


# ---- statistics --------------------------------------------------------------------------------------------
@dataclass
class Lift:
    relative: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


def relative_lift(y_control: np.ndarray, y_treatment: np.ndarray) -> Lift:
    """mean(treatment) / mean(control) - 1 with a 95% CI: log-link GLM, robust HC0 covariance (statsmodels)."""
    import statsmodels.api as sm

    if len(y_control) < 2 or len(y_treatment) < 2 or y_control.sum() <= 0 or y_treatment.sum() <= 0:
        return Lift(None, None, None, None)
    y = np.concatenate([y_control, y_treatment]).astype(float)
    x = sm.add_constant(np.r_[np.zeros(len(y_control)), np.ones(len(y_treatment))])
    fit = sm.GLM(y, x, family=sm.families.Poisson()).fit(cov_type="HC0")
    b, se = float(fit.params[1]), float(fit.bse[1])
    return Lift(math.expm1(b), math.expm1(b - Z95 * se), math.expm1(b + Z95 * se), float(fit.pvalues[1]))


@dataclass
class GroupRow:
    group: str
    users: int
    conversion_rate: float
    revenue_per_user: float
    conversion_lift: Lift | None = None
    revenue_lift: Lift | None = None


def group_table(frame: pd.DataFrame, groups: list[str], baseline: str) -> list[GroupRow]:
    """One row per group; lifts against `baseline`."""
    base = frame[frame["variant"] == baseline]
    rows = []
    for g in groups:
        part = frame[frame["variant"] == g]
        row = GroupRow(g, len(part), float(part["converted"].mean()) if len(part) else float("nan"),
                       float(part["revenue"].mean()) if len(part) else float("nan"))
        if g != baseline:
            row.conversion_lift = relative_lift(base["converted"].to_numpy(), part["converted"].to_numpy())
            row.revenue_lift = relative_lift(base["revenue"].to_numpy(), part["revenue"].to_numpy())
        rows.append(row)
    return rows


@dataclass
class ExperimentReport:
    experiment: str
    control: str
    users: int
    multiple_exposures_dropped: int
    srm: dict[str, Any]
    variants: list[GroupRow]
    segments: dict[str, list[GroupRow]] = field(default_factory=dict)


def analyze_experiment(exposures: pd.DataFrame, outcomes: pd.DataFrame, experiment: str,
                       weights: dict[str, float] | None = None, control: str | None = None,
                       segments: pd.DataFrame | None = None, sparse_max: int = 5,
                       alpha: float = 0.001) -> ExperimentReport:
    from service.srm import srm_test

    users, multi = first_exposures(exposures, experiment)
    if users.empty:
        raise ValueError(f"--experiment: no exposures for {experiment!r} (have "
                         f"{sorted(exposures['experiment'].unique().tolist())})")
    frame = per_user_metrics(users, exposures, outcomes)
    seen = sorted(frame["variant"].unique().tolist())
    variants = list(weights) if weights else seen
    if control is None:
        control = variants[0]
    if control not in seen:
        raise ValueError(f"control {control!r} has no exposed users in {experiment!r} (have {seen})")
    counts = frame["variant"].value_counts().to_dict()
    srm = asdict(srm_test({v: int(counts.get(v, 0)) for v in variants},
                          weights or {v: 1 / len(variants) for v in variants}, experiment=experiment, alpha=alpha)) \
        if len(variants) >= 2 else {"p_value": None, "mismatch": False}
    ordered = [control, *[v for v in variants if v != control and v in seen]]
    report = ExperimentReport(experiment, control, len(frame), multi, srm, group_table(frame, ordered, control))
    if segments is not None:
        seg = frame.merge(segments[["user_id", "segment"]], on="user_id", how="left").fillna({"segment": "unknown"})
    else:
        seg = frame.assign(segment=np.where(frame["history_length"] <= sparse_max, f"sparse (<={sparse_max})",
                                            f"dense (>{sparse_max})"))
    for name, part in seg.groupby("segment", sort=True):
        report.segments[str(name)] = group_table(part, [v for v in ordered if (part["variant"] == v).any()], control)
    return report


def analyze_holdout(exposures: pd.DataFrame, outcomes: pd.DataFrame, holdout: str) -> ExperimentReport:
    """The holdout as its own group: holdout users against every user exposed to any experiment."""
    held, _ = first_exposures(exposures, holdout)
    others = exposures[(exposures["experiment"] != holdout) & ~exposures["user_id"].isin(held["user_id"])]
    con = duckdb.connect()
    con.register("e", others)
    exposed = con.execute("""SELECT user_id, 'exposed' AS variant, min(ts) AS first_ts,
                             arg_min(history_length, ts) AS history_length FROM e GROUP BY user_id""").df()
    frame = per_user_metrics(pd.concat([held.assign(variant=HOLDOUT_VARIANT), exposed], ignore_index=True),
                             exposures, outcomes)
    return ExperimentReport(holdout, HOLDOUT_VARIANT, len(frame), 0, {},
                            group_table(frame, [HOLDOUT_VARIANT, "exposed"], HOLDOUT_VARIANT))


# ---- output ------------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.2f}%"


def _lift_cell(lift: Lift | None) -> str:
    if lift is None:
        return "(control)"
    if lift.relative is None:
        return "n/a"
    return f"{_pct(lift.relative)} [{_pct(lift.ci_low)}, {_pct(lift.ci_high)}] p={lift.p_value:.3g}"


def format_table(reports: list[ExperimentReport]) -> str:
    lines = []
    for r in reports:
        srm = r.srm.get("p_value")
        lines.append(f"== {r.experiment}: {r.users} users" +
                     (f", SRM p={srm:.3g}{' MISMATCH' if r.srm.get('mismatch') else ''}" if srm is not None else "") +
                     (f", {r.multiple_exposures_dropped} multi-variant users dropped" if r.multiple_exposures_dropped
                      else ""))
        sections = [("all users", r.variants)] + [(f"segment {k}", v) for k, v in r.segments.items()]
        for title, rows in sections:
            lines.append(f"  -- {title}")
            lines.append(f"  {'group':<14}{'users':>9}{'conv':>9}{'rev/user':>10}  conversion lift [95% CI]"
                         "                 revenue/user lift [95% CI]")
            for g in rows:
                lines.append(f"  {g.group:<14}{g.users:>9}{100 * g.conversion_rate:>8.2f}%{g.revenue_per_user:>10.3f}"
                             f"  {_lift_cell(g.conversion_lift):<41}{_lift_cell(g.revenue_lift)}")
    return "\n".join(lines)


def plot(reports: list[ExperimentReport], path: Path) -> None:
    """Conversion and revenue lift with 95% CIs, per variant (all users and each segment)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scoter.io import atomic_write

    entries = []
    for r in reports:
        for title, rows in [("all", r.variants), *r.segments.items()]:
            for g in rows:
                if g.conversion_lift is not None:
                    entries.append((f"{r.experiment}\n{g.group} · {title}", g.conversion_lift, g.revenue_lift))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * max(3, len(entries)) + 1.2), sharey=True)
    for ax, idx, name in ((axes[0], 1, "conversion rate"), (axes[1], 2, "revenue per user")):
        for y, e in enumerate(entries):
            lift = e[idx]
            if lift is None or lift.relative is None:
                continue
            ax.errorbar(100 * lift.relative, y, xerr=[[100 * (lift.relative - lift.ci_low)],
                                                      [100 * (lift.ci_high - lift.relative)]], fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_xlabel(f"relative lift in {name}, % (95% CI)")
    axes[0].set_yticks(range(len(entries)), [e[0] for e in entries], fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def to_json(reports: list[ExperimentReport]) -> dict[str, Any]:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean({"experiments": [asdict(r) for r in reports]})


def run(exposures_src: str, outcomes_path: Path, *, experiment: str | None = None,
        experiments_file: Path | None = None, segments_path: Path | None = None, sparse_max: int = 5,
        alpha: float = 0.001) -> list[ExperimentReport]:
    """The CLI's work: every experiment in the exposures (or the one asked for), then the holdout if any."""
    exposures = read_exposures(exposures_src)
    if exposures.empty:
        raise ValueError(f"--exposures: {exposures_src} holds no events")
    outcomes = read_outcomes(outcomes_path)
    segments = None
    if segments_path is not None:
        segments = duckdb.connect().read_csv(str(segments_path)).df()
        if not {"user_id", "segment"} <= set(segments.columns):
            raise ValueError(f"--segments: {segments_path} needs columns user_id, segment")
        segments = segments.astype({"user_id": "string", "segment": "string"})
    config = None
    if experiments_file is not None:
        from service.experiments import load_config

        config = load_config(experiments_file).config
    holdout_key = config.holdout.key if config is not None and config.holdout is not None else None
    if holdout_key is None and (exposures["variant"] == HOLDOUT_VARIANT).any():
        holdout_key = str(exposures.loc[exposures["variant"] == HOLDOUT_VARIANT, "experiment"].iloc[0])
    keys = [experiment] if experiment else sorted(k for k in exposures["experiment"].unique() if k != holdout_key)
    reports = []
    for key in keys:
        weights = control = None
        if config is not None:
            from service.experiments import weights_of

            weights = weights_of(config, key)
            control = next(iter(weights))
        reports.append(analyze_experiment(exposures, outcomes, key, weights, control, segments, sparse_max, alpha))
    if holdout_key is not None and not experiment:
        reports.append(analyze_holdout(exposures, outcomes, holdout_key))
    return reports


def write_outputs(reports: list[ExperimentReport], out_json: Path | None, png: Path | None) -> None:
    from scoter.io import write_json_atomic

    if out_json is not None:
        write_json_atomic(out_json, to_json(reports))
        log.info("wrote %s", out_json)
    if png is not None:
        plot(reports, png)
        log.info("wrote %s", png)


def dumps(reports: list[ExperimentReport]) -> str:
    return json.dumps(to_json(reports), indent=2)
