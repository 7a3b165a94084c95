"""Atomic artifact writes (temp file in the same folder, then rename): a killed job never leaves half a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from scoter.io import write_atomic, write_json_atomic


def write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, newline=False, ensure_ascii=False, default=_default)


def save_npy(path: Path, arr: np.ndarray) -> None:
    write_atomic(path, lambda f: np.save(f, arr), "wb")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def _default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating | np.bool_):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
