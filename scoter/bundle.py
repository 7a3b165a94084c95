"""Contract 1: the model bundle (written by model_export/, read by service/). Torch-free: numpy + pydantic.

A bundle is a directory holding `manifest.json`, the ONNX graph(s), `items.json` (external item ids, entry i-1 =
item index i), `codes.npy` (semantic-ID table, row i = code tuple of item i) and `trie.npz`. The manifest records
the sha256 of every other file and a digest of its own content, so a bundle that was truncated, bit-flipped or
hand-edited is refused by `load_bundle` with a message that names the problem. Bundles are written into a
temporary sibling directory and renamed into place, so a reader never sees a half-written bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scoter.io import write_bytes_atomic

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_FILES = ("model.onnx", "items.json", "codes.npy", "trie.npz")

DType = Literal["int64", "bool", "float32", "float16"]


class BundleError(ValueError):
    """A bundle that must not be served: missing file, bad checksum, unknown schema, malformed manifest."""


class TensorSpec(BaseModel):
    """One graph input or output; symbolic dimensions are strings (e.g. "batch")."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    dtype: DType
    shape: list[int | str]


class Manifest(BaseModel):
    """Everything a reader needs to trust and drive the graph without importing torch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    model_id: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    backbone: str = Field(min_length=1)
    created_at: str
    reasoning_version: str
    reasoning_steps: int = Field(ge=1, description="K: steps in one user's reasoning matrix")
    reasoning_dim: int = Field(ge=1, description="D: width of one step embedding")
    d_item: int = Field(ge=1)
    code_length: int = Field(ge=1, description="L: positions in a semantic-ID tuple")
    codebook_sizes: list[int]
    n_items: int = Field(ge=1)
    default_beam: int = Field(ge=1, description="beam width baked into the graph = length of its output lists")
    max_history: int = Field(ge=1, description="longest history (T) the model accepts")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    graphs: dict[str, str] = Field(description="variant (fp32, fp16) -> graph file")
    files: dict[str, str] = Field(description="relative path -> sha256 of every file except the manifest")
    export: dict[str, Any] = Field(default_factory=dict, description="provenance: exporter, opset, versions")
    manifest_sha256: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(self.codebook_sizes) != self.code_length or any(v < 1 for v in self.codebook_sizes):
            raise ValueError(
                f"codebook_sizes must hold code_length={self.code_length} positive sizes, got {self.codebook_sizes}"
            )
        if "fp32" not in self.graphs:
            raise ValueError("graphs must name an fp32 graph")
        for variant, name in self.graphs.items():
            if name not in self.files:
                raise ValueError(f"graphs.{variant} = {name!r} is not listed in files")
        for name in REQUIRED_FILES:
            if name not in self.files:
                raise ValueError(f"files must list {name!r}")
        for name in self.files:
            if Path(name).is_absolute() or ".." in Path(name).parts or name == MANIFEST_NAME:
                raise ValueError(f"files entry {name!r} must be a relative path inside the bundle")
        return self

    def content_digest(self) -> str:
        """sha256 of the canonical JSON of every field except `manifest_sha256` (detects hand edits)."""
        body = self.model_dump(mode="json", exclude={"manifest_sha256"})
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_items(path: Path, item_ids: list[str]) -> None:
    if not all(isinstance(i, str) and i for i in item_ids):
        raise ValueError("items.json: every external item id must be a non-empty string")
    write_bytes_atomic(path, json.dumps(item_ids).encode())


def finalize_manifest(bundle_dir: Path, fields: dict[str, Any]) -> Manifest:
    """Hash every file in `bundle_dir`, validate the manifest fields and write manifest.json."""
    files = {
        p.relative_to(bundle_dir).as_posix(): sha256_file(p)
        for p in sorted(bundle_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    }
    try:
        manifest = Manifest.model_validate({**fields, "files": files, "manifest_sha256": ""})
    except ValidationError as exc:
        raise BundleError(f"manifest fields invalid: {_describe(exc)}") from exc
    manifest = manifest.model_copy(update={"manifest_sha256": manifest.content_digest()})
    write_bytes_atomic(bundle_dir / MANIFEST_NAME, manifest.model_dump_json(indent=2).encode())
    return manifest


@contextlib.contextmanager
def atomic_bundle_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory beside `out_dir`; on clean exit rename it to `out_dir`.

    The caller writes the bundle files and calls `finalize_manifest` inside the block. On an exception the temp
    directory is removed and any existing bundle at `out_dir` is left untouched.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        yield tmp
        if not (tmp / MANIFEST_NAME).is_file():
            raise BundleError(f"bundle in {tmp} has no {MANIFEST_NAME}; call finalize_manifest before leaving")
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            os.rmdir(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
    )


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and validate manifest.json (schema version, fields, self digest); no file hashing."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: missing (not a model bundle)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: must be a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {version!r} is not supported (this reader understands {SCHEMA_VERSION})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path}: malformed manifest: {_describe(exc)}") from exc
    if manifest.manifest_sha256 != manifest.content_digest():
        raise BundleError(f"{path}: manifest_sha256 does not match its content (the manifest was edited)")
    return manifest


def load_bundle(bundle_dir: str | Path, verify_checksums: bool = True) -> tuple[Manifest, Path]:
    """Load and verify a bundle: manifest, every listed file present with its sha256, item/code tables.

    Raises `BundleError` naming the first problem found; never returns a bundle that fails a check.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: bundle directory does not exist")
    manifest = read_manifest(bundle_dir)
    for name, expected in manifest.files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: file {name!r} listed in the manifest is missing")
        if verify_checksums and sha256_file(path) != expected:
            raise BundleError(f"{bundle_dir}: checksum mismatch for {name!r} (file is corrupt or was replaced)")
    _check_tables(bundle_dir, manifest)
    return manifest, bundle_dir


def _check_tables(bundle_dir: Path, manifest: Manifest) -> None:
    """The item and code tables must agree with the manifest's dimensions."""
    items = load_items(bundle_dir)
    if len(items) != manifest.n_items:
        raise BundleError(f"{bundle_dir}: items.json has {len(items)} ids, manifest n_items={manifest.n_items}")
    codes = np.load(bundle_dir / "codes.npy", allow_pickle=False)
    if codes.shape != (manifest.n_items + 1, manifest.code_length):
        raise BundleError(
            f"{bundle_dir}: codes.npy shape {codes.shape} != (n_items + 1, code_length) = "
            f"({manifest.n_items + 1}, {manifest.code_length})"
        )


def load_items(bundle_dir: Path) -> list[str]:
    """External item ids; entry i-1 is model item index i."""
    path = Path(bundle_dir) / "items.json"
    try:
        items = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BundleError(f"{path}: must be a JSON list of item id strings")
    return items
