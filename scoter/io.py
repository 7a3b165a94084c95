"""Atomic file writes (torch-free): write a temp file in the target's folder, fsync, then rename over the target.

A crash or an error leaves the old file (or none), never a half-written one. Temp names start with "." (bundle
hashing skips dot files) and keep the target's suffix (so `np.save`/`np.savez` do not append another one).

Also the one formatter of an artifact's size on disk (`describe_output`, `format_size`), which every stage's
"wrote ..." log line uses.
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
    "describe_output",
    "disk_usage",
    "format_size",
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


def disk_usage(path: str | Path) -> tuple[int, int]:
    """(bytes, files) on disk: a file's size, or the total over every file under a folder (0, 0 if missing)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def format_size(n_bytes: int) -> str:
    """A byte count for a log line: '512 B', '3.4 KiB', '5.9 MiB', '1.25 GiB' (binary units)."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20)):
        if n_bytes < 1024 * scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 2**30:.2f} GiB"


def describe_output(path: str | Path) -> str:
    """'PATH (5.9 MiB)' for a file, 'PATH (12 files, 5.9 MiB)' for a folder: the size part of a "wrote" line."""
    path = Path(path)
    size, files = disk_usage(path)
    if path.is_dir():
        return f"{path} ({files} file{'s' if files != 1 else ''}, {format_size(size)})"
    return f"{path} ({format_size(size)})"
