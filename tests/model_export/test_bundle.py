"""The bundle format: what load_bundle accepts, every corruption it refuses, and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scoter.bundle import (
    MANIFEST_NAME,
    BundleError,
    atomic_bundle_dir,
    finalize_manifest,
    load_bundle,
    sha256_file,
)
from scoter.ranker import BundleRanker


def _edit_manifest(bundle: Path, **changes) -> None:
    path = bundle / MANIFEST_NAME
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_valid_bundle_loads_with_recorded_dimensions(bundle, trained):
    src, _ = trained
    manifest, path = load_bundle(bundle)
    assert path == bundle
    assert manifest.n_items == src.codes.shape[0] - 1
    assert manifest.code_length == len(src.codebook_sizes) and manifest.codebook_sizes == src.codebook_sizes
    assert (manifest.reasoning_steps, manifest.reasoning_dim) == (src.reasoning_steps, src.reasoning_dim)
    assert manifest.default_beam == src.beam and manifest.max_history == src.max_history
    assert set(manifest.graphs) == {"fp32", "fp16", "int8"}
    assert [s.name for s in manifest.inputs] == ["history", "history_mask", "reasoning", "reasoning_present"]
    assert [s.name for s in manifest.outputs] == ["item_ids", "scores"]
    on_disk = {p.name for p in bundle.iterdir()} - {MANIFEST_NAME}
    assert set(manifest.files) == on_disk  # every file is covered by a checksum, nothing extra
    for name, digest in manifest.files.items():
        assert sha256_file(bundle / name) == digest


@pytest.mark.parametrize("name", ["model.onnx", "model.fp16.onnx", "model.int8.onnx", "items.json", "codes.npy",
                                  "trie.npz"])
def test_missing_file_is_refused(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=f"{name}.*missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["model.onnx", "codes.npy", "items.json"])
def test_flipped_byte_is_refused(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"checksum mismatch for '{name}'"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_schema_version_is_refused(bundle_copy, version):
    _edit_manifest(bundle_copy, schema_version=version)
    with pytest.raises(BundleError, match="schema_version .* is not supported"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("changes", [{"n_items": 299}, {"default_beam": 10}, {"model_version": "2"}])
def test_hand_edited_manifest_is_refused(bundle_copy, changes):
    _edit_manifest(bundle_copy, **changes)
    with pytest.raises(BundleError, match="manifest was edited"):
        load_bundle(bundle_copy)


def test_manifest_pointing_at_another_file_is_refused(bundle_copy):
    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    raw["files"]["model.onnx"] = raw["files"]["model.fp16.onnx"]
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="manifest was edited"):
        load_bundle(bundle_copy)


def test_malformed_manifest_names_the_field(bundle_copy):
    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    del raw["model_id"]
    raw["reasoning_steps"] = -3
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="malformed manifest") as info:
        load_bundle(bundle_copy)
    assert "model_id" in str(info.value) and "reasoning_steps" in str(info.value)


def test_manifest_that_is_not_json_is_refused(bundle_copy):
    (bundle_copy / MANIFEST_NAME).write_text('{"schema_version": 1,')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_missing_manifest_or_directory_is_refused(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_path_outside_the_bundle_is_refused(bundle_copy):
    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    raw["files"]["../escape.bin"] = "0" * 64
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="relative path inside the bundle"):
        load_bundle(bundle_copy)


def test_runner_refuses_a_corrupt_bundle(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="checksum mismatch for 'model.onnx'"):
        BundleRanker(bundle_copy)


def test_failed_write_leaves_no_bundle_and_no_temp_dir(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="boom"), atomic_bundle_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_kept_unless_overwrite(bundle_copy):
    before = sha256_file(bundle_copy / MANIFEST_NAME)
    with pytest.raises(FileExistsError), atomic_bundle_dir(bundle_copy):
        pass
    with pytest.raises(RuntimeError), atomic_bundle_dir(bundle_copy, overwrite=True):
        raise RuntimeError("export failed half way")
    assert sha256_file(bundle_copy / MANIFEST_NAME) == before
    load_bundle(bundle_copy)  # the old bundle is intact and still verifies


def test_invalid_manifest_fields_never_publish_a_bundle(bundle, tmp_path):
    manifest, _ = load_bundle(bundle)
    fields = manifest.model_dump(mode="json", exclude={"files", "manifest_sha256"})
    fields["codebook_sizes"] = fields["codebook_sizes"][:-1]  # length no longer matches code_length
    out = tmp_path / "bad"
    with pytest.raises(BundleError, match="codebook_sizes"), atomic_bundle_dir(out) as tmp:
        for name in ("model.onnx", "items.json", "codes.npy", "trie.npz"):
            (tmp / name).write_bytes((bundle / name).read_bytes())
        finalize_manifest(tmp, fields)
    assert not out.exists()
