"""Sample-ratio-mismatch check: are exposures per variant consistent with the configured weights?

A chi-squared goodness-of-fit test over exposure counts; a tiny p-value (default < 0.001, the usual SRM
threshold) means assignment or logging is broken and the experiment's results should not be trusted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import chisquare


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
