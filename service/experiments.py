"""A/B traffic splitting: experiments config and GrowthBook-compatible deterministic assignment.

The hash and bucketing follow GrowthBook's cross-SDK spec (hash v1/v2, `inNamespace`, `getBucketRanges`,
`chooseVariation`) so that assignments agree with any GrowthBook SDK given the same seeds and user id: the
shared `cases.json` vectors test the functions, and the official Python SDK's `run_experiment` is the oracle for
whole configs (tests/service/test_experiments.py). The SDK itself is not called per request: evaluating a
config through it costs two to three times as much as these functions, on a path where every tens of
microseconds count (benchmarks/ab_assignment.py, BENCHMARKS.md).

Several experiments may run at once. Experiments sharing a namespace id get disjoint slices of it (mutual
exclusion); experiments in different namespaces overlap. A global holdout takes a share of users out of every
experiment: they get the control bundle and are reported as their own group. Only one experiment can decide a
user's bundle (each request is ranked by one bundle), so experiments whose variants name bundles must be
mutually exclusive; the others are label-only (the variant travels in the response for the caller to act on).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
HOLDOUT_VARIANT = "holdout"


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a over the string's code points (GrowthBook's `hashFnv32a`; ids are ASCII, see api.ID_PATTERN)."""
    h = _FNV_OFFSET
    for ch in text:
        h = ((h ^ ord(ch)) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def gb_hash(seed: str, value: str, version: int) -> float | None:
    """GrowthBook `hash`: v2 = fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000; v1 kept for the vectors."""
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    return None


def in_namespace(user_id: str, namespace: tuple[str, float, float]) -> bool:
    """GrowthBook `inNamespace`: hash v1 of the user id with seed "__" + namespace id, inside [lo, hi)."""
    n = gb_hash("__" + namespace[0], user_id, 1)
    return n is not None and namespace[1] <= n < namespace[2]


def equal_weights(n: int) -> list[float]:
    return [1.0 / n] * n if n > 0 else []


def bucket_ranges(n: int, coverage: float = 1.0, weights: list[float] | None = None) -> list[tuple[float, float]]:
    """GrowthBook `getBucketRanges`: coverage clamped to [0, 1]; bad weights fall back to equal weights."""
    coverage = min(1.0, max(0.0, coverage))
    if weights is None or len(weights) != n or not 0.99 <= sum(weights) <= 1.01:
        weights = equal_weights(n)
    ranges, cumulative = [], 0.0
    for w in weights:
        start = cumulative
        cumulative += w
        ranges.append((start, start + coverage * w))
    return ranges


def choose_variation(n: float, ranges: list[tuple[float, float]]) -> int:
    """GrowthBook `chooseVariation`: index of the half-open range holding n, -1 when none does."""
    for i, (lo, hi) in enumerate(ranges):
        if lo <= n < hi:
            return i
    return -1


NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=NAME_PATTERN)
    weight: float = Field(ge=0, le=1)
    bundle: Path | None = Field(None, description="bundle that ranks this variant's users; none: label-only")


class Namespace(BaseModel):
    """A slice [lo, hi) of a namespace: experiments with the same id and disjoint slices never share a user."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=NAME_PATTERN)
    range: tuple[float, float]

    @field_validator("range")
    @classmethod
    def _range(cls, r: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= r[0] < r[1] <= 1:
            raise ValueError(f"range {list(r)} must satisfy 0 <= lo < hi <= 1")
        return r


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, pattern=NAME_PATTERN)
    seed: str | None = None  # GrowthBook uses the key when no seed is given
    status: Literal["running", "stopped"] = "running"
    coverage: float = Field(1.0, ge=0, le=1)
    namespace: Namespace | None = None
    bucket_version: int = Field(0, ge=0, description="bump to re-bucket every user (new hash seed); keep it to "
                                "keep users in their variants")
    min_bucket_version: int = Field(0, ge=0, description="users who were in the experiment under any bucket version "
                                    "below this one are excluded (served control, no exposure), as GrowthBook's "
                                    "minBucketVersion; 0 excludes nobody")
    variants: list[Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _versions(self) -> Experiment:
        if self.min_bucket_version > self.bucket_version:
            raise ValueError(f"min_bucket_version: {self.min_bucket_version} is above bucket_version "
                             f"{self.bucket_version}; it can only exclude users of earlier versions")
        return self

    @field_validator("variants")
    @classmethod
    def _weights(cls, variants: list[Variant]) -> list[Variant]:
        total = sum(v.weight for v in variants)
        if not 0.99 <= total <= 1.01:
            raise ValueError(f"variant weights sum to {total:.4f}, must sum to 1")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate variant names {names}")
        with_bundle = [v.name for v in variants if v.bundle is not None]
        if with_bundle and len(with_bundle) != len(variants):
            raise ValueError(f"variants {sorted(set(names) - set(with_bundle))} have no bundle: either every "
                             "variant names a bundle or none does (label-only)")
        return variants

    def seed_at(self, version: int) -> str:
        """The seed hashed with the user id under bucket version ``version``: GrowthBook's (seed, else key),
        suffixed by the version from 1 on."""
        seed = self.seed if self.seed is not None else self.key
        return seed if version == 0 else f"{seed}__{version}"

    @property
    def hash_seed(self) -> str:
        return self.seed_at(self.bucket_version)

    @property
    def blocked_seeds(self) -> tuple[str, ...]:
        """Seeds of the versions whose users `min_bucket_version` excludes."""
        return tuple(self.seed_at(v) for v in range(self.min_bucket_version))

    @property
    def routes_bundles(self) -> bool:
        return self.variants[0].bundle is not None

    def overlaps(self, other: Experiment) -> bool:
        """Can one user be in both? Only a shared namespace id with disjoint slices keeps them apart."""
        a, b = self.namespace, other.namespace
        if a is None or b is None or a.id != b.id:
            return True
        return a.range[0] < b.range[1] and b.range[0] < a.range[1]


class Holdout(BaseModel):
    """A share of users kept out of every experiment and served control: the baseline for all launches."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field("global-holdout", min_length=1, pattern=NAME_PATTERN)
    seed: str | None = None
    share: float = Field(gt=0, le=0.5)

    @property
    def hash_seed(self) -> str:
        return self.seed if self.seed is not None else self.key


class ExperimentsConfig(BaseModel):
    """The file: experiments (several may run), an optional global holdout. The first experiment's first variant
    is the service's control: it serves everyone outside the bundle experiments, the holdout included."""

    model_config = ConfigDict(extra="forbid")

    experiments: list[Experiment] = Field(min_length=1)
    holdout: Holdout | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentsConfig:
        keys = [e.key for e in self.experiments]
        if len(set(keys)) != len(keys):
            raise ValueError(f"experiments: duplicate keys {keys}")
        if self.holdout is not None and self.holdout.key in keys:
            raise ValueError(f"holdout: key {self.holdout.key!r} is also an experiment key")
        if not self.experiments[0].routes_bundles:
            raise ValueError("experiments.0: the first experiment's variants must name bundles (its first "
                             "variant is the service's control)")
        running = [e for e in self.experiments if e.status == "running"]
        for i, a in enumerate(running):
            for b in running[i + 1:]:
                if a.namespace and b.namespace and a.namespace.id == b.namespace.id and a.overlaps(b):
                    raise ValueError(f"namespace {a.namespace.id!r}: experiments {a.key!r} {list(a.namespace.range)}"
                                     f" and {b.key!r} {list(b.namespace.range)} overlap")
                if a.routes_bundles and b.routes_bundles and a.overlaps(b):
                    raise ValueError(f"experiments {a.key!r} and {b.key!r} both choose bundles and can share a "
                                     "user: give them one namespace with disjoint ranges, or make one label-only")
        paths: dict[str, Path] = {}
        for e in self.experiments:
            for v in e.variants:
                if v.bundle is None:
                    continue
                if paths.setdefault(v.name, v.bundle) != v.bundle:
                    raise ValueError(f"variant {v.name!r} names two bundles ({paths[v.name]} and {v.bundle}); "
                                     "a variant name is one bundle")
        return self

    @property
    def active(self) -> Experiment:
        """The first running bundle experiment, else the first (whose control then gets all traffic)."""
        return next((e for e in self.experiments if e.status == "running" and e.routes_bundles),
                    self.experiments[0])

    @property
    def control(self) -> str:
        return self.experiments[0].variants[0].name

    def bundle_paths(self) -> dict[str, Path]:
        """variant name -> bundle path: control and every variant of a running bundle experiment."""
        out = {self.control: self.experiments[0].variants[0].bundle}
        for e in self.experiments:
            if e.status == "running" and e.routes_bundles:
                out.update({v.name: v.bundle for v in e.variants})
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Membership:
    """One experiment a user is in (an exposure when a response is served)."""

    experiment: str
    variant: str


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: str  # the variant whose bundle serves the request (control when in no bundle experiment)
    in_experiment: bool  # False: outside coverage, stopped, holdout or forced (served control, no exposure)
    forced: bool = False
    memberships: tuple[Membership, ...] = field(default_factory=tuple)  # every experiment the user is in
    holdout: bool = False


def assign(exp: Experiment, user_id: str) -> Assignment:
    """One experiment on its own (no namespace or holdout): deterministic and sticky for a given config."""
    control = exp.variants[0].name
    if exp.status != "running" or len(exp.variants) < 2 or not user_id:
        return Assignment(exp.key, control, False)
    ranges = bucket_ranges(len(exp.variants), exp.coverage, [v.weight for v in exp.variants])
    idx = _variation(exp.hash_seed, exp.blocked_seeds, ranges, user_id)
    if idx < 0:
        return Assignment(exp.key, control, False)
    return Assignment(exp.key, exp.variants[idx].name, True, memberships=(Membership(exp.key, exp.variants[idx].name),))


def _variation(seed: str, blocked: tuple[str, ...], ranges: list[tuple[float, float]], user_id: str) -> int:
    """The user's variation index, -1 outside coverage or when an excluded earlier version had them in.

    Stateless stand-in for GrowthBook's sticky-bucket check: a user "was in" version v when v's seed put them in a
    variation under the current coverage and weights (so keep those fixed while raising min_bucket_version)."""
    if any(choose_variation(gb_hash(old, user_id, 2), ranges) >= 0 for old in blocked):  # type: ignore[arg-type]
        return -1
    return choose_variation(gb_hash(seed, user_id, 2), ranges)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Compiled:
    key: str
    seed: str
    blocked: tuple[str, ...]
    namespace: tuple[str, float, float] | None
    ranges: list[tuple[float, float]]
    names: list[str]
    routes_bundles: bool


class Assigner:
    """A config compiled for the request path: bucket ranges computed once; per user, one hash per namespace
    check and one per experiment the user can be in."""

    def __init__(self, config: ExperimentsConfig):
        self.config = config
        self.control = config.control
        self.default_experiment = config.active.key
        self.holdout = config.holdout
        self._holdout_seed = config.holdout.hash_seed if config.holdout else ""
        self._exps = [_Compiled(e.key, e.hash_seed, e.blocked_seeds,
                                (e.namespace.id, *e.namespace.range) if e.namespace else None,
                                bucket_ranges(len(e.variants), e.coverage, [v.weight for v in e.variants]),
                                [v.name for v in e.variants], e.routes_bundles)
                      for e in config.experiments if e.status == "running" and len(e.variants) >= 2]

    def assign(self, user_id: str) -> Assignment:
        if not user_id:
            return Assignment(self.default_experiment, self.control, False)
        if self.holdout is not None and gb_hash(self._holdout_seed, user_id, 2) < self.holdout.share:
            return Assignment(self.holdout.key, self.control, False, holdout=True,
                              memberships=(Membership(self.holdout.key, HOLDOUT_VARIANT),))
        memberships: list[Membership] = []
        routed: Membership | None = None
        for e in self._exps:
            if e.namespace is not None and not in_namespace(user_id, e.namespace):
                continue
            idx = _variation(e.seed, e.blocked, e.ranges, user_id)
            if idx < 0:
                continue
            m = Membership(e.key, e.names[idx])
            memberships.append(m)
            if e.routes_bundles:
                routed = m
        if routed is None:
            return Assignment(self.default_experiment, self.control, False, memberships=tuple(memberships))
        return Assignment(routed.experiment, routed.variant, True, memberships=tuple(memberships))


@dataclass(frozen=True)
class LoadedConfig:
    config: ExperimentsConfig
    version: str  # sha256 prefix of the file bytes; logged on every (re)load
    path: Path | None
    assigner: Assigner = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "assigner", Assigner(self.config))


def load_config(path: Path) -> LoadedConfig:
    """Parse a YAML/JSON experiments file; relative bundle paths are resolved against the file's folder."""
    raw = Path(path).read_bytes()
    try:
        data = yaml.safe_load(raw) if path.suffix in {".yaml", ".yml"} else json.loads(raw)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid YAML/JSON: {exc}") from exc
    try:
        cfg = ExperimentsConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: {_errors(exc)}") from exc
    for e in cfg.experiments:
        for v in e.variants:
            if v.bundle is not None and not v.bundle.is_absolute():
                v.bundle = (Path(path).parent / v.bundle).resolve()
    return LoadedConfig(cfg, hashlib.sha256(raw).hexdigest()[:12], Path(path))


def single_bundle_config(bundle: Path) -> LoadedConfig:
    """`--bundle DIR`: one variant named "default", no experiment traffic split."""
    cfg = ExperimentsConfig(experiments=[Experiment(key="default", status="stopped",
                                                    variants=[Variant(name="default", weight=1.0, bundle=bundle)])])
    return LoadedConfig(cfg, hashlib.sha256(str(Path(bundle).resolve()).encode()).hexdigest()[:12], None)


def weights_of(config: ExperimentsConfig, key: str) -> dict[str, float]:
    """variant -> weight of experiment `key`; for the holdout key, {holdout: share, rest: 1 - share}."""
    if config.holdout is not None and key == config.holdout.key:
        return {HOLDOUT_VARIANT: config.holdout.share, "rest": 1 - config.holdout.share}
    exp = next((e for e in config.experiments if e.key == key), None)
    if exp is None:
        raise ValueError(f"experiment {key!r} is not in the config (have {[e.key for e in config.experiments]})")
    return {v.name: v.weight for v in exp.variants}


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
