"""Atomic file writes (torch-free): write a temp file in the target's folder, fsync, then rename over the target.

A crash or an error leaves the old file (or none), never a half-written one. Temp names start with "." (bundle
hashing skips dot files) and keep the target's suffix (so `np.save`/`np.savez` do not append another one).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_write",
    "read_json",
    "save_npy",
    "write_atomic",
    "write_bytes_atomic",
    "write_json",
    "write_json_atomic",
    "write_text_atomic",
]


@contextlib.contextmanager
def atomic_write(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix); on a clean exit fsync it, chmod 644 and rename it over `path`.

    The caller writes the temp path however it likes (`np.save`, `torch.save`, `write_text`...). On an exception
    the temp file is removed and `path` is left untouched. The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the service may run as another user
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[IO[Any]], Any], mode: str = "wb") -> None:
    """Open a temp file beside `path` with `mode`, call `write(file)`, then rename it over `path` atomically."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_write(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        write(fh)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2, newline: bool = True,
                      **dumps_kwargs: Any) -> None:
    """`json.dumps(obj, indent=indent, **dumps_kwargs)` (plus a final newline) written atomically as UTF-8."""
    write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_kwargs) + ("\n" if newline else ""))


def write_json(path: str | Path, obj: Any) -> None:
    """Artifact JSON (the reasoning stage's files): UTF-8 unescaped, numpy values and paths converted, no newline."""
    write_json_atomic(path, obj, newline=False, ensure_ascii=False, default=json_default)


def save_npy(path: str | Path, arr: np.ndarray) -> None:
    """`np.save` written atomically."""
    write_atomic(path, lambda f: np.save(f, arr), "wb")


def read_json(path: str | Path) -> Any:
    """Parsed JSON; a syntax error names the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars and arrays and paths."""
    if isinstance(o, np.integer | np.floating | np.bool_):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
