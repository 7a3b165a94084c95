"""A/B traffic splitting: experiments config and GrowthBook-compatible deterministic assignment.

The hash and bucketing follow GrowthBook's cross-SDK spec (hash v2, getBucketRanges, chooseVariation) so
that assignments agree with any GrowthBook SDK given the same seed and user id, and the shared
`cases.json` vectors can test them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a over the string's code points (GrowthBook's `hashFnv32a`)."""
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


class Variant(BaseModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    weight: float = Field(ge=0, le=1)
    bundle: Path


class Experiment(BaseModel):
    key: str = Field(min_length=1)
    seed: str | None = None  # GrowthBook uses the key when no seed is given
    status: Literal["running", "stopped"] = "running"
    coverage: float = Field(1.0, ge=0, le=1)
    variants: list[Variant] = Field(min_length=1)

    @field_validator("variants")
    @classmethod
    def _weights(cls, variants: list[Variant]) -> list[Variant]:
        total = sum(v.weight for v in variants)
        if not 0.99 <= total <= 1.01:
            raise ValueError(f"variant weights sum to {total:.4f}, must sum to 1")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate variant names {names}")
        return variants

    @property
    def hash_seed(self) -> str:
        return self.seed if self.seed is not None else self.key


class ExperimentsConfig(BaseModel):
    """The file: a list of experiments; at most one running (each request is ranked by exactly one bundle)."""

    experiments: list[Experiment] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_running(self) -> ExperimentsConfig:
        running = [e.key for e in self.experiments if e.status == "running"]
        if len(running) > 1:
            raise ValueError(f"experiments: more than one running ({running}); at most one may route traffic")
        return self

    @property
    def active(self) -> Experiment:
        """The routing experiment: the running one, else the first (whose control then gets all traffic)."""
        return next((e for e in self.experiments if e.status == "running"), self.experiments[0])

    def bundle_paths(self) -> dict[str, Path]:
        """variant name -> bundle path of the routing experiment."""
        return {v.name: v.bundle for v in self.active.variants}


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: str
    in_experiment: bool  # False: outside coverage or stopped (served control, no exposure)
    forced: bool = False


def assign(exp: Experiment, user_id: str) -> Assignment:
    """Deterministic and sticky for a given config: same (seed, user id, weights, coverage) -> same variant."""
    control = exp.variants[0].name
    if exp.status != "running" or len(exp.variants) < 2 or not user_id:
        return Assignment(exp.key, control, False)
    n = gb_hash(exp.hash_seed, user_id, 2)
    idx = choose_variation(n, bucket_ranges(len(exp.variants), exp.coverage, [v.weight for v in exp.variants]))
    if idx < 0:
        return Assignment(exp.key, control, False)
    return Assignment(exp.key, exp.variants[idx].name, True)


@dataclass(frozen=True)
class LoadedConfig:
    config: ExperimentsConfig
    version: str  # sha256 prefix of the file bytes; logged on every (re)load
    path: Path | None


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
            if not v.bundle.is_absolute():
                v.bundle = (Path(path).parent / v.bundle).resolve()
    return LoadedConfig(cfg, hashlib.sha256(raw).hexdigest()[:12], Path(path))


def single_bundle_config(bundle: Path) -> LoadedConfig:
    """`--bundle DIR`: one variant named "default", no experiment traffic split."""
    cfg = ExperimentsConfig(experiments=[Experiment(key="default", status="stopped",
                                                    variants=[Variant(name="default", weight=1.0, bundle=bundle)])])
    return LoadedConfig(cfg, hashlib.sha256(str(Path(bundle).resolve()).encode()).hexdigest()[:12], None)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
