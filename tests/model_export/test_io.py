"""scoter.io: atomic writes leave the old file (or none) on error and no temp file behind."""

import json
import stat

import pytest

from scoter.io import atomic_write, write_atomic, write_json_atomic


def test_atomic_write_replaces_and_cleans_up(tmp_path) -> None:
    target = tmp_path / "sub" / "x.json"
    write_json_atomic(target, {"a": "é"}, ensure_ascii=False)
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é"}
    assert target.read_text(encoding="utf-8").endswith("}\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomic(target, lambda f: f.write(b"[]"))
    assert target.read_bytes() == b"[]"
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_atomic_write_keeps_old_file_on_error(tmp_path) -> None:
    target = tmp_path / "x.npy"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".npy"
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]
