"""Semantic IDs: item embeddings -> a unique code tuple per item (RQ-VAE or residual k-means).

Every generative backbone decodes items as code tuples, so each item needs exactly one tuple and each tuple
exactly one item. Quantisers collide (several items share a tuple); an appended disambiguation code
(0, 1, 2, ... among items that share a tuple, by item index) makes tuples unique, as in TIGER.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scoter.io import atomic_write

atomic_output = atomic_write  # the old name, kept for callers outside this package

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class SemanticIdConfig(BaseModel):
    """Quantiser settings; defaults follow the paper's Table 7 except epochs (the paper's 20000 take hours on a
    CPU)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["rqvae", "rqkmeans"] = "rqvae"
    levels: int = Field(default=4, ge=1, le=8)
    codebook_size: int = Field(default=256, ge=2, le=65536)
    seed: int = 42
    num_threads: int = Field(
        default=1, ge=1, description="torch/BLAS threads; fixed so runs are reproducible"
    )
    # RQ-VAE (Table 7)
    latent_dim: int = Field(default=32, ge=1)
    hidden_dims: list[int] = Field(default_factory=lambda: [512, 256, 128])
    beta: float = Field(default=0.25, ge=0.0, description="commitment weight")
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    batch_size: int = Field(default=1024, ge=1)
    epochs: int = Field(default=50, ge=1, description="paper: 20000; ~1% collisions on Beauty by 25-50")
    kmeans_init: bool = True
    standardize: bool = Field(default=True, description="zero-mean unit-variance inputs (avoids collapse)")
    dead_code_reset: bool = Field(default=True, description="re-seed unused codes from live residuals")
    reset_until: float = Field(default=1.0, ge=0.0, le=1.0, description="stop resetting after this fraction")
    eval_every: int = Field(default=5, ge=1, description="epochs between collision checks (best kept)")
    # RQ-KMeans
    kmeans_n_init: int = Field(default=1, ge=1)
    kmeans_max_iter: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SemanticIdConfig:
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError("hidden_dims: every width must be >= 1")
        return self

    @classmethod
    def small(cls, **overrides: Any) -> SemanticIdConfig:
        """Tiny settings for tests and demos (seconds on synthetic data)."""
        base: dict[str, Any] = dict(
            levels=3,
            codebook_size=16,
            latent_dim=8,
            hidden_dims=[32, 16],
            epochs=30,
            batch_size=256,
            eval_every=5,
        )
        base.update(overrides)
        return cls(**base)


# ---------------------------------------------------------------------------------------------------- statistics
def code_stats(raw_codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Collision rate, max collisions and per-level usage/perplexity of codes [n, levels] (before disambiguation).

    collision_rate = 1 - unique tuples / items (the usual definition, as in LC-Rec/LETTER);
    items_in_collision = share of items whose tuple is shared; max_collisions = largest group sharing a tuple.
    """
    raw_codes = np.asarray(raw_codes)
    if raw_codes.ndim != 2 or raw_codes.shape[0] == 0:
        raise ValueError(f"codes: expected a non-empty [n_items, levels] array, got shape {raw_codes.shape}")
    n, levels = raw_codes.shape
    _, inverse, counts = np.unique(raw_codes, axis=0, return_inverse=True, return_counts=True)
    group = counts[inverse.reshape(-1)]
    per_level = []
    for lvl in range(levels):
        c = np.bincount(raw_codes[:, lvl], minlength=codebook_size).astype(np.float64)
        p = c[c > 0] / n
        n_prefixes = len(np.unique(raw_codes[:, : lvl + 1], axis=0))
        per_level.append(
            {
                "level": lvl,
                "used_codes": int((c > 0).sum()),
                "usage": float((c > 0).sum() / codebook_size),
                "perplexity": float(np.exp(-(p * np.log(p)).sum())),
                "unique_prefixes": int(n_prefixes),
            }
        )
    return {
        "n_items": int(n),
        "levels": int(levels),
        "codebook_size": int(codebook_size),
        "unique_tuples": int(len(counts)),
        "collision_rate": float(1.0 - len(counts) / n),
        "items_in_collision": float((group > 1).sum() / n),
        "max_collisions": int(counts.max()),
        "per_level": per_level,
    }


def disambiguate(raw_codes: np.ndarray) -> np.ndarray:
    """Append a code 0,1,2,... among items sharing a tuple (ordered by item index): every row becomes unique."""
    raw_codes = np.asarray(raw_codes, dtype=np.int64)
    n = raw_codes.shape[0]
    _, inverse = np.unique(raw_codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # groups together, item order kept inside a group
    sorted_groups = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    extra = np.empty(n, dtype=np.int64)
    extra[order] = np.arange(n) - group_start
    return np.concatenate([raw_codes, extra[:, None]], axis=1)


# ---------------------------------------------------------------------------------------------------- container
@dataclass
class SemanticIds:
    """codes[i] is item i's tuple (row 0 = padding, unused); the last column is the disambiguation code."""

    codes: np.ndarray  # int64 [n_items + 1, levels + 1]
    codebook_sizes: list[int]  # per position; the last is the max collision count (>= 1)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0] - 1)

    @property
    def length(self) -> int:
        return int(self.codes.shape[1])

    @classmethod
    def from_raw(
        cls, raw_codes: np.ndarray, codebook_size: int, report: dict[str, Any] | None = None
    ) -> SemanticIds:
        """Build from quantiser output [n_items, levels] (row j = item j+1): disambiguate and compute stats."""
        raw_codes = np.asarray(raw_codes, dtype=np.int64)
        stats = code_stats(raw_codes, codebook_size)
        full = disambiguate(raw_codes)
        codes = np.concatenate([np.zeros((1, full.shape[1]), dtype=np.int64), full], axis=0)
        sizes = [int(codebook_size)] * raw_codes.shape[1] + [int(stats["max_collisions"])]
        rep = {
            **(report or {}),
            **stats,
            "unique_after_disambiguation": float(len(np.unique(full, axis=0)) / len(full)),
        }
        return cls(codes=codes, codebook_sizes=sizes, report=rep)

    def validate(self) -> None:
        """Raise ValueError naming the field if the table is inconsistent."""
        c = self.codes
        if c.ndim != 2 or c.dtype != np.int64 or c.shape[0] < 2:
            raise ValueError(f"codes: expected int64 [n_items + 1, L], got {c.dtype} {c.shape}")
        if len(self.codebook_sizes) != c.shape[1]:
            raise ValueError(
                f"codebook_sizes: {len(self.codebook_sizes)} entries for {c.shape[1]} code positions"
            )
        body = c[1:]
        if (body < 0).any() or (body >= np.asarray(self.codebook_sizes)[None, :]).any():
            raise ValueError("codes: a code is outside [0, codebook_sizes[position])")
        if len(np.unique(body, axis=0)) != len(body):
            raise ValueError("codes: two items share a code tuple")

    def save(self, path: str | Path) -> Path:
        """Write `<path>.npz` (codes, sizes, report) and a readable `<stem>.json` report; temp file then rename."""
        self.validate()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        report_json = json.dumps(self.report, indent=2, sort_keys=True)
        with atomic_write(path) as tmp:
            np.savez(
                tmp,
                codes=self.codes,
                codebook_sizes=np.asarray(self.codebook_sizes, dtype=np.int64),
                report=np.asarray(report_json),
                schema_version=np.asarray(SCHEMA_VERSION),
            )
        with atomic_write(path.with_suffix(".json")) as tmp:
            tmp.write_text(report_json + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SemanticIds:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"semantic ids file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            missing = {"codes", "codebook_sizes", "report"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)}")
            version = int(z["schema_version"]) if "schema_version" in z.files else 0
            if version != SCHEMA_VERSION:
                raise ValueError(f"{path}: schema_version {version}, expected {SCHEMA_VERSION}")
            sid = cls(
                codes=z["codes"].astype(np.int64, copy=False),
                codebook_sizes=[int(v) for v in z["codebook_sizes"]],
                report=json.loads(str(z["report"])),
            )
        sid.validate()
        return sid


# ---------------------------------------------------------------------------------------------------- quantisers
def _check_embeddings(embeddings: np.ndarray, config: SemanticIdConfig) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"embeddings: expected [n_items, dim] with n_items >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings: contains NaN or inf")
    if x.shape[0] < config.codebook_size:
        raise ValueError(
            f"codebook_size: {config.codebook_size} codes for only {x.shape[0]} items; k-means needs n_items >= codes"
        )
    return x.astype(np.float32, copy=False)


def rq_kmeans(embeddings: np.ndarray, config: SemanticIdConfig) -> tuple[np.ndarray, list[np.ndarray]]:
    """Residual k-means: level l clusters the residual left by levels < l. Returns (codes [n, L], centroids)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = _check_embeddings(embeddings, config).astype(np.float64)
    residual = x.copy()
    codes = np.empty((x.shape[0], config.levels), dtype=np.int64)
    centroids: list[np.ndarray] = []
    with threadpool_limits(limits=config.num_threads):
        for lvl in range(config.levels):
            t0 = time.perf_counter()
            km = KMeans(
                n_clusters=config.codebook_size,
                n_init=config.kmeans_n_init,
                max_iter=config.kmeans_max_iter,
                random_state=config.seed + lvl,
            ).fit(residual)
            codes[:, lvl] = km.labels_
            centroids.append(km.cluster_centers_.astype(np.float32))
            residual = residual - km.cluster_centers_[km.labels_]
            log.info(
                "rq-kmeans level %d/%d: %.1fs, residual norm %.4f",
                lvl + 1,
                config.levels,
                time.perf_counter() - t0,
                float(np.linalg.norm(residual, axis=1).mean()),
            )
    return codes, centroids


def build_semantic_ids(
    embeddings: np.ndarray, config: SemanticIdConfig | None = None
) -> tuple[SemanticIds, Any]:
    """Quantise item embeddings [n_items, dim] (row j = item j+1). Returns (SemanticIds, trained quantiser)."""
    config = config or SemanticIdConfig()
    x = _check_embeddings(embeddings, config)
    t0 = time.perf_counter()
    if config.method == "rqkmeans":
        raw, model = rq_kmeans(x, config)
        extra: dict[str, Any] = {}
    else:
        from offline.semantic_ids.rqvae import train_rqvae

        model, raw, extra = train_rqvae(x, config)
    seconds = time.perf_counter() - t0
    report = {"method": config.method, "seconds": round(seconds, 2), "config": config.model_dump(), **extra}
    sid = SemanticIds.from_raw(raw, config.codebook_size, report)
    log.info(
        "%s: %d items, collision rate %.4f, max collisions %d, usage %s, %.1fs",
        config.method,
        sid.n_items,
        sid.report["collision_rate"],
        sid.report["max_collisions"],
        [round(p["usage"], 3) for p in sid.report["per_level"]],
        seconds,
    )
    return sid, model
