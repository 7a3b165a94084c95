"""Sample-ratio-mismatch check: are exposed users per variant consistent with the configured weights?

A chi-squared goodness-of-fit test over counts; a tiny p-value (default < 0.001, the usual SRM threshold) means
assignment or logging is broken and the experiment's results should not be trusted. The unit is the user:
`users_from_exposures` counts unique users from the exposure events. Request counts (the Prometheus counter)
are kept for a quick look but are not a valid input: requests per user vary, so one heavy user fakes a mismatch.
Unique users are counted exactly (a set per variant), not with HyperLogLog: its ~0.8% standard error is larger
than the binomial noise SRM tests against once a variant has more than ~15,000 users.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import chisquare

from service.exposures import is_stream_url, read_stream


@dataclass(frozen=True)
class SrmResult:
    experiment: str
    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    alpha: float
    mismatch: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def srm_test(counts: dict[str, int], weights: dict[str, float], *, experiment: str = "",
             alpha: float = 0.001) -> SrmResult:
    """Chi-squared test of observed counts against weights (variants with weight 0 must have 0 counts)."""
    unknown = set(counts) - set(weights)
    if unknown:
        raise ValueError(f"counts: variants {sorted(unknown)} are not in the weights {sorted(weights)}")
    names = [v for v in weights if weights[v] > 0]
    total_w = sum(weights[v] for v in names)
    observed = [int(counts.get(v, 0)) for v in names]
    n = sum(observed)
    if n == 0:
        raise ValueError("counts: no exposures to test")
    if len(names) < 2:
        raise ValueError("weights: need at least two variants with positive weight")
    expected = [n * weights[v] / total_w for v in names]
    stat, p = chisquare(observed, expected)
    return SrmResult(experiment, dict(zip(names, observed, strict=True)),
                     dict(zip(names, expected, strict=True)), float(stat), float(p), alpha, bool(p < alpha))


def counts_from_metrics_text(text: str, experiment: str | None = None) -> dict[str, dict[str, int]]:
    """experiment -> variant -> exposures, from a Prometheus exposition (`scoter_exposures_total`)."""
    out: dict[str, dict[str, int]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name != "scoter_exposures_total":
                continue
            exp = s.labels.get("experiment", "")
            if experiment is None or exp == experiment:
                out.setdefault(exp, {})
                out[exp][s.labels["variant"]] = out[exp].get(s.labels["variant"], 0) + int(s.value)
    return out


def counts_from_url(url: str, experiment: str | None = None, timeout_s: float = 5.0) -> dict[str, dict[str, int]]:
    resp = httpx.get(url, timeout=timeout_s)
    resp.raise_for_status()
    return counts_from_metrics_text(resp.text, experiment)


def counts_from_file(path: Path) -> dict[str, dict[str, int]]:
    """JSON: {"experiment": {"variant": count}} or a flat {"variant": count} (experiment "")."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object of counts")
    if all(isinstance(v, int) for v in data.values()):
        return {"": data}
    if all(isinstance(v, dict) and all(isinstance(c, int) for c in v.values()) for v in data.values()):
        return data
    raise ValueError(f"{path}: counts must be integers ({{variant: n}} or {{experiment: {{variant: n}}}})")


def users_from_exposures(source: str, experiment: str | None = None,
                         chunk: int = 10_000) -> dict[str, dict[str, int]]:
    """experiment -> variant -> unique users, from exposure events: a JSONL file or a Redis stream URL
    (`redis://host:port/db?stream=scoter:exposures`, read with XRANGE in chunks)."""
    seen: dict[str, dict[str, set[str]]] = {}

    def add(e: dict) -> None:
        if experiment is None or e["experiment"] == experiment:
            seen.setdefault(e["experiment"], {}).setdefault(e["variant"], set()).add(e["user_id"])

    if is_stream_url(source):
        for e in read_stream(source, chunk):
            add(e)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"--exposures: {path} does not exist")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    add(json.loads(line))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"--exposures: {path} line {n} is not an exposure event ({exc})") from exc
    if not seen:
        raise ValueError(f"--exposures: no events{f' for {experiment!r}' if experiment else ''} in {source}")
    return {exp: {v: len(u) for v, u in variants.items()} for exp, variants in seen.items()}
