"""Cross-check PromQL used by deploy/ (alerts, dashboard) against the metrics the service really registers.

promtool proves the expressions parse; this proves they name real series: every `scoter_*` metric exists in
`service.metrics.ServiceMetrics` and every label used in a matcher or `by (...)` is one of its labels.
"""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram

from service.metrics import ServiceMetrics

METRIC = re.compile(r"\b(scoter_[a-z0-9_]+)\b")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\b(scoter_[a-z0-9_]+)\s*\{([^}]*)\}")
LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def service_series() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric ServiceMetrics registers (histograms add `le`)."""
    metrics = ServiceMetrics()
    out: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, Counter | Gauge | Histogram):
            continue
        name, labels = value._name, set(value._labelnames)  # prometheus_client keeps these only privately
        if isinstance(value, Counter):
            out[f"{name}_total"] = labels
        elif isinstance(value, Histogram):
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = out[f"{name}_count"] = labels
        else:
            out[name] = labels
    return out


def check_against_service(exprs: list[str]) -> None:
    """Raise AssertionError naming the expression that uses an unknown scoter metric or label."""
    series = service_series()
    assert series, "ServiceMetrics registered nothing"
    for expr in exprs:
        names = set(METRIC.findall(expr))
        unknown = names - set(series)
        assert not unknown, f"unknown metric(s) {sorted(unknown)} in {expr!r}; the service has {sorted(series)}"
        for name, body in MATCHERS.findall(expr):
            bad = set(LABEL.findall(body)) - series[name]
            assert not bad, f"label(s) {sorted(bad)} not on {name} in {expr!r}"
        scoter_labels = set().union(*(series[n] for n in names)) if names else set()
        for group in BY.findall(expr):
            used = {g.strip() for g in group.split(",") if g.strip()}
            bad = used - scoter_labels if names else set()
            assert not bad, f"grouping label(s) {sorted(bad)} not on {sorted(names)} in {expr!r}"
