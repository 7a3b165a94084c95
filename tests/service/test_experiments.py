"""GrowthBook-compatible assignment (checked against GrowthBook's cross-SDK cases.json vectors) and config."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from scoter.testing import THREE_IN_TWO, growthbook_experiments
from service.experiments import (
    Experiment,
    Variant,
    assign,
    bucket_ranges,
    choose_variation,
    fnv1a32,
    gb_hash,
    load_config,
)

# growthbook/growthbook packages/sdk-js/test/cases.json, section "hash": [seed, value, version, expected]
HASH_VECTORS = [
    ("", "a", 1, 0.22), ("", "b", 1, 0.077), ("b", "a", 1, 0.946), ("ef", "d", 1, 0.652),
    ("asdf", "8952klfjas09ujk", 1, 0.549), ("", "123", 1, 0.011), ("", '___)((*":&', 1, 0.563),
    ("seed", "a", 2, 0.0505), ("seed", "b", 2, 0.2696), ("foo", "ab", 2, 0.2575), ("foo", "def", 2, 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 2, 0.124), ("90850943850283058242805", "123", 2, 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 2, 0.0128), ("abc", "def", 99, None),
]

# section "getBucketRange": [name, [numVariations, coverage, weights], expected ranges]
BUCKET_VECTORS = [
    ((2, 1, None), [(0, 0.5), (0.5, 1)]),
    ((2, 0.5, None), [(0, 0.25), (0.5, 0.75)]),
    ((2, 0, None), [(0, 0), (0.5, 0.5)]),
    ((4, 1, None), [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]),
    ((2, 1, [0.4, 0.6]), [(0, 0.4), (0.4, 1)]),
    ((3, 1, [0.2, 0.3, 0.5]), [(0, 0.2), (0.2, 0.5), (0.5, 1)]),
    ((3, 0.2, [0.2, 0.3, 0.5]), [(0, 0.04), (0.2, 0.26), (0.5, 0.6)]),
    ((2, -0.2, None), [(0, 0), (0.5, 0.5)]),
    ((2, 1.5, None), [(0, 0.5), (0.5, 1)]),
    ((2, 1, [0.4, 0.1]), [(0, 0.5), (0.5, 1)]),
    ((2, 1, [0.7, 0.6]), [(0, 0.5), (0.5, 1)]),
    ((4, 1, [0.4, 0.4, 0.2]), [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]),
    ((2, 1, [0.4, 0.5999]), [(0, 0.4), (0.4, 0.9999)]),
]

EVEN = [(0, 0.5), (0.5, 1)]
REDUCED = [(0, 0.25), (0.5, 0.75)]
# section "chooseVariation": [name, n, ranges, expected]
CHOOSE_VECTORS = [
    (0.2, EVEN, 0), (0.4, EVEN, 0), (0.6, EVEN, 1), (0.8, EVEN, 1), (0, EVEN, 0), (0.5, EVEN, 1),
    (0.2, REDUCED, 0), (0.4, REDUCED, -1), (0.6, REDUCED, 1), (0.8, REDUCED, -1), (0.25, REDUCED, -1),
    (0.5, REDUCED, 1), (0.5, [(0, 0.5), (0.5, 0.5), (0.5, 1)], 2),
]


def test_fnv1a32_reference_values():
    # Landon Curt Noll's FNV-1a 32-bit test values
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


@pytest.mark.parametrize("seed,value,version,expected", HASH_VECTORS)
def test_growthbook_hash_vectors(seed, value, version, expected):
    assert gb_hash(seed, value, version) == expected


@pytest.mark.parametrize("args,expected", BUCKET_VECTORS)
def test_growthbook_bucket_range_vectors(args, expected):
    got = bucket_ranges(*args)
    assert len(got) == len(expected)
    for (lo, hi), (elo, ehi) in zip(got, expected, strict=True):
        assert lo == pytest.approx(elo, abs=1e-9) and hi == pytest.approx(ehi, abs=1e-9)


@pytest.mark.parametrize("n,ranges,expected", CHOOSE_VECTORS)
def test_growthbook_choose_variation_vectors(n, ranges, expected):
    assert choose_variation(n, ranges) == expected


def _exp(**kw) -> Experiment:
    base = dict(key="exp1", seed="s1", variants=[Variant(name="control", weight=0.5, bundle=Path("a")),
                                                 Variant(name="scoter", weight=0.5, bundle=Path("b"))])
    base.update(kw)
    return Experiment(**base)


def test_assignment_is_sticky_and_follows_weights():
    exp = _exp(variants=[Variant(name="control", weight=0.2, bundle=Path("a")),
                         Variant(name="scoter", weight=0.8, bundle=Path("b"))])
    users = [f"user{i}" for i in range(20000)]
    first = [assign(exp, u).variant for u in users]
    assert first == [assign(exp, u).variant for u in users]  # deterministic
    share = Counter(first)["scoter"] / len(users)
    assert 0.78 < share < 0.82
    # same as GrowthBook's own arithmetic for one user
    n = gb_hash("s1", "user7", 2)
    assert first[7] == ("control" if n < 0.2 else "scoter")


def test_coverage_and_stopped_experiments_serve_control_without_exposure():
    partial = _exp(coverage=0.3)
    results = [assign(partial, f"u{i}") for i in range(5000)]
    inside = sum(r.in_experiment for r in results) / len(results)
    assert 0.27 < inside < 0.33
    assert all(r.variant == "control" for r in results if not r.in_experiment)
    stopped = _exp(status="stopped")
    assert {assign(stopped, f"u{i}").variant for i in range(200)} == {"control"}
    assert not any(assign(stopped, f"u{i}").in_experiment for i in range(200))


def test_config_load_resolves_paths_and_versions(tmp_path: Path):
    body = {"experiments": [{"key": "e", "seed": "x", "variants": [
        {"name": "control", "weight": 0.5, "bundle": "bundles/a"},
        {"name": "scoter", "weight": 0.5, "bundle": "/abs/b"}]}]}
    f = tmp_path / "exp.json"
    f.write_text(json.dumps(body))
    loaded = load_config(f)
    assert loaded.config.bundle_paths() == {"control": (tmp_path / "bundles/a").resolve(), "scoter": Path("/abs/b")}
    f.write_text(json.dumps(body) + "\n")
    assert load_config(f).version != loaded.version  # version = hash of the file bytes


@pytest.mark.parametrize("mutate,field", [
    (lambda e: e["experiments"][0]["variants"][0].update(weight=0.9), "variants"),
    (lambda e: e["experiments"].append({**e["experiments"][0], "key": "other"}), "both choose bundles"),
    (lambda e: e["experiments"].append({**e["experiments"][0]}), "duplicate keys"),
    (lambda e: (e["experiments"][0].update(namespace={"id": "ns", "range": [0, 0.6]}),
                e["experiments"].append({**e["experiments"][0], "key": "other",
                                         "namespace": {"id": "ns", "range": [0.5, 1]}})), "overlap"),
    (lambda e: e["experiments"][0].update(namespace={"id": "ns", "range": [0.7, 0.2]}), "lo < hi"),
    (lambda e: e["experiments"][0]["variants"][1].pop("bundle"), "have no bundle"),
    (lambda e: e["experiments"][0]["variants"][0].update(weight=-0.5), "greater than or equal to 0"),
    (lambda e: e.update(holdout={"share": 0.7}), "holdout.share"),
    (lambda e: e.update(holdout={"key": "e", "share": 0.05}), "also an experiment key"),
    (lambda e: e["experiments"].append({"key": "x", "status": "stopped", "variants": [
        {"name": "control", "weight": 1, "bundle": "elsewhere"}]}), "names two bundles"),
    (lambda e: e["experiments"][0].update(bucket_versoin=2), "bucket_versoin"),
    (lambda e: e["experiments"][0].update(coverage=2), "coverage"),
    (lambda e: e["experiments"][0]["variants"][1].update(name="control"), "duplicate"),
])
def test_bad_config_names_the_problem(tmp_path: Path, mutate, field):
    body = {"experiments": [{"key": "e", "variants": [
        {"name": "control", "weight": 0.5, "bundle": "a"}, {"name": "scoter", "weight": 0.5, "bundle": "b"}]}]}
    mutate(body)
    f = tmp_path / "exp.yaml"
    f.write_text(json.dumps(body))  # JSON is valid YAML
    with pytest.raises(ValueError, match=field):
        load_config(f)


def test_example_config_is_valid():
    loaded = load_config(Path(__file__).resolve().parents[2] / "deploy" / "experiments.example.yaml")
    exp = loaded.config.active
    assert exp.status == "running" and [v.name for v in exp.variants] == ["tiger", "scoter"]
    assert all(p.is_absolute() for p in loaded.config.bundle_paths().values())
    assert set(loaded.config.bundle_paths()) == {"tiger", "scoter", "hstu"} and loaded.config.holdout.share == 0.05
    got = [loaded.assigner.assign(f"ex-{i}") for i in range(4000)]
    assert all(a.variant == "tiger" for a in got if a.holdout or not a.in_experiment)
    assert {a.experiment for a in got if a.in_experiment} == {"scoter-vs-tiger", "hstu-vs-tiger"}


# The shape: three experiments running at once in two namespaces plus a 5% global holdout. "ranking"
# holds two mutually exclusive bundle experiments; "ui" overlaps them with a label-only one.


def _three_in_two(tmp_path: Path):
    f = tmp_path / "three.json"
    f.write_text(json.dumps(THREE_IN_TWO))
    return load_config(f)


def test_three_experiments_two_namespaces_and_a_holdout_over_100k_users(tmp_path: Path):
    from scipy.stats import chisquare

    loaded = _three_in_two(tmp_path)
    assert set(loaded.config.bundle_paths()) == {"control", "scoter", "hstu"}
    users = [f"user-{i}" for i in range(100_000)]
    got = [loaded.assigner.assign(u) for u in users]
    namespace_of = {e.key: e.namespace.id for e in loaded.config.experiments}
    per_exp: dict[str, Counter] = {}
    holdout = 0
    for a in got:
        if a.holdout:
            holdout += 1
            assert a.variant == "control" and not a.in_experiment
            assert [m.experiment for m in a.memberships] == ["global-holdout"]
            continue
        spaces = [namespace_of[m.experiment] for m in a.memberships]
        assert len(spaces) == len(set(spaces)), a  # at most one experiment per namespace
        for m in a.memberships:
            per_exp.setdefault(m.experiment, Counter())[m.variant] += 1
        routed = [m for m in a.memberships if m.experiment != "ten-items"]
        assert (a.variant, a.in_experiment) == ((routed[0].variant, True) if routed else ("control", False))
    # observed splits within SRM tolerance (chi-squared, alpha = 0.001) of what the config asks for
    assert chisquare([holdout, len(users) - holdout], [0.05 * len(users), 0.95 * len(users)]).pvalue > 0.001
    rest = len(users) - holdout
    expect = {"reasoning-on": {"control": 0.25, "scoter": 0.25}, "new-backbone": {"control": 0.12, "hstu": 0.28},
              "ten-items": {"k5": 0.5, "k10": 0.5}}
    for key, shares in expect.items():
        observed = [per_exp[key][v] for v in shares]
        total = sum(observed)
        assert total == pytest.approx(rest * sum(shares.values()), rel=0.02)
        assert chisquare(observed, [total * s / sum(shares.values()) for s in shares.values()]).pvalue > 0.001
    # nobody is in both ranking experiments; the label-only one overlaps both
    both = sum(1 for a in got if {"reasoning-on", "new-backbone"} <= {m.experiment for m in a.memberships})
    assert both == 0
    assert sum(1 for a in got if {"reasoning-on", "ten-items"} <= {m.experiment for m in a.memberships}) > 20_000


def test_assignment_matches_the_official_growthbook_sdk(tmp_path: Path):
    """The growthbook SDK's own run_experiment, given the same experiments, is the oracle for every user."""
    pytest.importorskip("growthbook")
    from growthbook.common_types import EvaluationContext, GlobalContext, Options, StackContext, UserContext
    from growthbook.core import run_experiment

    loaded = _three_in_two(tmp_path)
    cfg = loaded.config
    sdk_exps, sdk_holdout = growthbook_experiments(cfg)
    g = GlobalContext(options=Options())
    for i in range(20_000):
        uid = f"sdk-{i}"
        ctx = EvaluationContext(user=UserContext(attributes={"id": uid}), global_ctx=g, stack=StackContext())
        ours = loaded.assigner.assign(uid)
        if run_experiment(sdk_holdout, None, ctx).value == "holdout":
            assert ours.holdout, uid
            continue
        assert not ours.holdout, uid
        want = {}
        for e in sdk_exps:
            r = run_experiment(e, None, ctx)
            if r.inExperiment:
                want[e.key] = r.value
        assert {m.experiment: m.variant for m in ours.memberships} == want, uid


def test_bucket_version_rebuckets_and_keeping_it_keeps_users(tmp_path: Path):
    base = _exp()
    same = _exp(variants=[Variant(name="control", weight=0.5, bundle=Path("a")),
                          Variant(name="scoter", weight=0.5, bundle=Path("b"))])
    bumped = _exp(bucket_version=1)
    users = [f"bv-{i}" for i in range(10_000)]
    before = [assign(base, u).variant for u in users]
    assert before == [assign(same, u).variant for u in users]  # an edit that keeps seed, weights, version
    moved = sum(b != assign(bumped, u).variant for b, u in zip(before, users, strict=True)) / len(users)
    assert 0.45 < moved < 0.55  # a fresh 50/50 draw: half the users change variant
    ramped = _exp(coverage=0.5)  # ramping coverage up or down never moves a user between variants
    assert all(assign(ramped, u).variant == b for u, b in zip(users, before, strict=True)
               if assign(ramped, u).in_experiment)


def test_min_bucket_version_excludes_earlier_users_as_the_sdk_with_sticky_buckets_does():
    """The oracle: the official SDK with a sticky-bucket store filled by version 0, then version 1 with
    minBucketVersion 1 and the re-bucketing seed. Its verdict (excluded, or which variant) is ours for every user."""
    pytest.importorskip("growthbook")
    import growthbook as gb
    from growthbook.common_types import EvaluationContext, GlobalContext, Options, StackContext, UserContext
    from growthbook.core import run_experiment
    from growthbook.growthbook import InMemoryStickyBucketService

    ours = _exp(coverage=0.6, bucket_version=1, min_bucket_version=1)
    kw = dict(key=ours.key, variations=["control", "scoter"], coverage=0.6, hashVersion=2)
    v0 = gb.Experiment(seed=ours.seed_at(0), bucketVersion=0, **kw)
    v1 = gb.Experiment(seed=ours.seed_at(1), bucketVersion=1, minBucketVersion=1, **kw)
    g = GlobalContext(options=Options(sticky_bucket_service=InMemoryStickyBucketService()))
    excluded = 0
    for i in range(5_000):
        uid = f"mbv-{i}"
        ctx = EvaluationContext(user=UserContext(attributes={"id": uid}), global_ctx=g, stack=StackContext())
        was_in = run_experiment(v0, None, ctx).inExperiment  # writes the user's sticky doc when in
        sdk = run_experiment(v1, None, ctx)
        got = assign(ours, uid)
        assert (got.in_experiment, got.variant) == (sdk.inExperiment, sdk.value if sdk.inExperiment else "control")
        excluded += was_in
        assert not (was_in and got.in_experiment), uid  # nobody who saw version 0 is in version 1
    assert 0.55 < excluded / 5_000 < 0.65  # the 60% covered under version 0
    # without min_bucket_version the same users are re-bucketed, not excluded
    assert sum(assign(_exp(coverage=0.6, bucket_version=1), f"mbv-{i}").in_experiment for i in range(5_000)) > 2_700


def test_min_bucket_version_above_bucket_version_is_refused():
    with pytest.raises(ValueError, match="min_bucket_version: 2 is above bucket_version 1"):
        _exp(bucket_version=1, min_bucket_version=2)
