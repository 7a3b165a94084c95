"""Contract 2: the byte format of one user's reasoning matrix H (K x D) in the reasoning store.

Written by offline/ (numpy + redis), read by service/ (numpy only). One value per user under
`scoter:h:{reasoning_version}:{user_id}`; the users' histories under `scoter:hist:{version}:{user_id}`.
Header (little endian, 20 bytes):

    magic  4s  b"SCTH"
    format B   FORMAT_VERSION (layout of these bytes)
    dtype  B   1 = float16, 2 = float32
    K      H   number of reasoning steps
    D      H   dimension of one step embedding
    flags  H   reserved: written 0, ignored by readers
    created_at Q  unix seconds when the value was computed (staleness is judged by the reader)

followed by K*D values, row-major.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import numpy as np

MAGIC = b"SCTH"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBHHHQ")
HEADER_SIZE = HEADER.size
_DTYPES = {1: np.dtype("<f2"), 2: np.dtype("<f4")}
_CODES = {np.dtype("<f2"): 1, np.dtype("<f4"): 2}

KEY_PREFIX = "scoter:h"
HISTORY_PREFIX = "scoter:hist"
META_PREFIX = "scoter:meta"


class ReasoningFormatError(ValueError):
    """A stored value that cannot be a reasoning matrix (bad magic, version, dtype, shape or length)."""


@dataclass(frozen=True)
class ReasoningValue:
    matrix: np.ndarray  # (K, D) float32
    created_at: int


def reasoning_key(reasoning_version: str, user_id: str) -> str:
    return f"{KEY_PREFIX}:{reasoning_version}:{user_id}"


def history_key(history_version: str, user_id: str) -> str:
    """Key of a user's recent item ids (JSON list of the catalogue's item id strings, newest last). Namespaced
    by version like reasoning keys, so a bundle reads only the histories published with its own dataset."""
    return f"{HISTORY_PREFIX}:{history_version}:{user_id}"


def meta_key(version: str) -> str:
    """Which dataset a version's keys belong to (JSON, written once by the first publish under it)."""
    return f"{META_PREFIX}:{version}"


def encode(matrix: np.ndarray, *, dtype: str = "float16", created_at: int | None = None) -> bytes:
    """Serialise one (K, D) matrix. float16 halves memory in Redis; the reader always gets float32."""
    arr = np.asarray(matrix)
    if arr.ndim != 2:
        raise ReasoningFormatError(f"reasoning matrix must be 2-d (K, D), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ReasoningFormatError("reasoning matrix contains NaN or inf")
    dt = np.dtype(dtype).newbyteorder("<")
    if dt not in _CODES:
        raise ReasoningFormatError(f"unsupported dtype {dtype!r}; use float16 or float32")
    k, d = arr.shape
    header = HEADER.pack(MAGIC, FORMAT_VERSION, _CODES[dt], k, d, 0, int(time.time() if created_at is None else created_at))
    return header + np.ascontiguousarray(arr, dtype=dt).tobytes()


@dataclass(frozen=True)
class StoredMatrix:
    """A checked value's (K, D) matrix still as bytes. The service keeps it so until the batch copies it into
    float32: no numpy call per request on the event loop, one copy in all."""

    value: bytes
    dtype: np.dtype
    k: int
    d: int

    def array(self) -> np.ndarray:
        """(K, D) read-only view in the stored dtype."""
        return np.frombuffer(self.value, dtype=self.dtype, offset=HEADER_SIZE).reshape(self.k, self.d)


@dataclass(frozen=True)
class StoredValue:
    matrix: StoredMatrix
    created_at: int


def read_header(value: bytes, *, expect_k: int | None = None, expect_d: int | None = None) -> StoredValue:
    """Check one stored value (header and length) without touching the matrix; raises ReasoningFormatError
    naming what is wrong."""
    if len(value) < HEADER_SIZE:
        raise ReasoningFormatError(f"value is {len(value)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, code, k, d, _flags, created = HEADER.unpack_from(value)
    if magic != MAGIC:
        raise ReasoningFormatError(f"bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise ReasoningFormatError(f"unknown format version {version} (this reader knows {FORMAT_VERSION})")
    if code not in _DTYPES:
        raise ReasoningFormatError(f"unknown dtype code {code}")
    if expect_k is not None and k != expect_k:
        raise ReasoningFormatError(f"K={k}, model expects {expect_k}")
    if expect_d is not None and d != expect_d:
        raise ReasoningFormatError(f"D={d}, model expects {expect_d}")
    dt = _DTYPES[code]
    if len(value) - HEADER_SIZE != k * d * dt.itemsize:
        raise ReasoningFormatError(f"body is {len(value) - HEADER_SIZE} bytes, expected {k * d * dt.itemsize} "
                                   f"for {k}x{d} {dt}")
    return StoredValue(StoredMatrix(value, dt, k, d), created)


def decode(value: bytes, *, expect_k: int | None = None, expect_d: int | None = None) -> ReasoningValue:
    """Parse and check one stored value; raises ReasoningFormatError naming what is wrong."""
    stored = read_header(value, expect_k=expect_k, expect_d=expect_d)
    return ReasoningValue(matrix=stored.matrix.array().astype(np.float32), created_at=stored.created_at)
